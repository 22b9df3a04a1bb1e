package sagemaker

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestTransformConcurrencyTimesPayload: each worker of a transform
// job (InstanceCount × MaxConcurrentTransforms, up to 16 × 64) holds a
// payload of up to MaxPayloadInMB and an answer of up to
// maxTransformAnswer (100 MB) in convoy's memory, so one job may pin
// 1024 × 200 MB. SageMaker refuses MaxConcurrentTransforms ×
// MaxPayloadInMB above 100 MB, and so does convoy. The answers a job holds
// are bounded too (answerLimit).
func TestTransformConcurrencyTimesPayload(t *testing.T) {
	hundred := 100
	req := &CreateTransformJobRequest{TransformJobName: "t", ModelName: "m", MaxConcurrentTransforms: 64, MaxPayloadInMB: &hundred,
		TransformInput:     &TransformInput{},
		TransformOutput:    &TransformOutput{S3OutputPath: "s3://out-bucket/p/"},
		TransformResources: &TransformResources{InstanceType: "ml.m5.large", InstanceCount: 16}}
	req.TransformInput.DataSource.S3DataSource = &struct {
		S3DataType string
		S3Uri      string
	}{"S3Prefix", "s3://in-bucket/p/"}
	err := req.validate()
	if err == nil {
		t.Fatal("MaxConcurrentTransforms 64 × MaxPayloadInMB 100 (× 16 instances) accepted: up to 1024 payloads of 100 MB and answers of 100 MB in memory at once")
	}
}

// TestPipeGzipRecordIOBuffersObject: a Pipe-mode channel with
// CompressionType Gzip and RecordWrapperType RecordIO reads each
// decompressed object whole into memory (up to 512 MiB) to learn its
// length. A ~500 KB gzip object therefore costs 512 MiB (more with
// ReadAll's growth), per channel and per host at once (20 channels × 16
// hosts). Secure behaviour: memory bounded well below the object's size
// (it decompresses twice: once to count, once to stream).
func TestPipeGzipRecordIOBuffersObject(t *testing.T) {
	const size = 200 << 20
	var zb bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&zb, gzip.BestCompression)
	zero := make([]byte, 1<<20)
	for range size >> 20 {
		zw.Write(zero)
	}
	zw.Close()
	obj := objects(1)[0]
	s3 := &fakeS3{data: map[string][]byte{obj.key: zb.Bytes()}}
	p := &pipeChannel{name: "train", objs: []stagedObject{obj}, hosts: 1, open: s3.open, gunzip: true, wrap: true}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := p.writeObject(context.Background(), io.Discard, obj); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
		t.Fatalf("streaming a %d KB gzip object (%d MB decompressed) as one RecordIO record allocated %d MB",
			zb.Len()>>10, size>>20, got>>20)
	}
}

// TestTransformAnswerNeverEnds: a container that
// sends headers and then drips its answer forever fails the job after
// InvocationsTimeoutInSeconds, and no output is written.
func TestTransformAnswerNeverEnds(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		w.WriteHeader(http.StatusOK)
		for {
			if _, err := w.Write([]byte("x")); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
	defer srv.Close()
	zero := 0
	req := transformRequest(func(r *CreateTransformJobRequest) {
		r.ModelClientConfig = &ModelClientConfig{InvocationsTimeoutInSeconds: 1, InvocationsMaxRetries: &zero}
	})
	store := &memStore{in: map[string]string{"a": "x\n"}, out: map[string]string{}}
	b := &batchRun{req: req, client: http.DefaultClient, instances: []transformInstance{{id: "i-1", base: srv.URL}},
		stream: func(id string) string { return id }, open: store.open, put: store.put}
	start := time.Now()
	err := b.run(context.Background(), []transformObject{{bucket: "in", key: "p/a", rel: "a"}})
	if err == nil || !strings.Contains(err.Error(), "did not answer") || time.Since(start) > 10*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	if len(store.out) != 0 {
		t.Fatalf("output written: %v", store.out)
	}
}

// TestRecordIOHugeLength: a RecordIO header
// claiming 512 MiB is refused before anything of that size is allocated.
func TestRecordIOHugeLength(t *testing.T) {
	var h [8]byte
	binary.LittleEndian.PutUint32(h[:4], recordIOMagic)
	binary.LittleEndian.PutUint32(h[4:], 1<<29-1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := newRecordReader(bytes.NewReader(h[:]), splitRecordIO, 6<<20).next()
	runtime.ReadMemStats(&after)
	var big *errRecordTooLarge
	if !errors.As(err, &big) {
		t.Fatalf("err %v, want record too large", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
		t.Fatalf("allocated %d bytes for a header", got)
	}
}

// A job's answers fit 1 GiB together: the per-answer limit falls with the
// number of workers, between 6 MB and 100 MB.
func TestAnswerLimit(t *testing.T) {
	for _, tc := range []struct {
		workers int
		want    int64
	}{{1, 100 << 20}, {10, 100 << 20}, {16, 64 << 20}, {100, 10737418}, {1024, 6 << 20}, {0, 100 << 20}} {
		if got := answerLimit(tc.workers); got != tc.want {
			t.Errorf("answerLimit(%d) = %d, want %d", tc.workers, got, tc.want)
		}
	}
}
