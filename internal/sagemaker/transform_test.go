package sagemaker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"convoy/internal/iam"
)

func records(t *testing.T, rr recordReader) []string {
	t.Helper()
	var out []string
	for {
		r, err := rr.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(r))
	}
}

func recordIO(parts ...string) string {
	var b bytes.Buffer
	for _, p := range parts {
		writeRecord(&b, strings.NewReader(p), int64(len(p)))
	}
	return b.String()
}

func TestTransformSplit(t *testing.T) {
	for _, tc := range []struct {
		name, split, in string
		want            []string
	}{
		{"line with final newline", splitLine, "a\nbb\nccc\n", []string{"a", "bb", "ccc"}},
		{"line without final newline", splitLine, "a\nbb\nccc", []string{"a", "bb", "ccc"}},
		{"line keeps empty lines", splitLine, "a\n\nb\n", []string{"a", "", "b"}},
		{"line empty object", splitLine, "", nil},
		{"none", splitNone, "a\nb\n", []string{"a\nb\n"}},
		{"none empty object", splitNone, "", nil},
		{"recordio", splitRecordIO, recordIO("ab", "cde"), []string{recordIO("ab"), recordIO("cde")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := records(t, newRecordReader(strings.NewReader(tc.in), tc.split, 1<<20))
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
				t.Fatalf("records %q, want %q", got, tc.want)
			}
		})
	}
	// A line longer than the bufio buffer is still one record.
	long := strings.Repeat("x", 200<<10)
	if got := records(t, newRecordReader(strings.NewReader(long+"\nend"), splitLine, 1<<20)); len(got) != 2 || got[0] != long || got[1] != "end" {
		t.Fatalf("long line: %d records", len(got))
	}
}

func TestTransformRecordTooLarge(t *testing.T) {
	for _, tc := range []struct {
		name, split, in string
		limit           int
	}{
		{"line", splitLine, "ok\n" + strings.Repeat("x", 11) + "\n", 10},
		{"last line", splitLine, "ok\n" + strings.Repeat("x", 11), 10},
		{"none", splitNone, strings.Repeat("x", 11), 10},
		{"recordio", splitRecordIO, recordIO("ok", strings.Repeat("x", 11)), 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBatcher(newRecordReader(strings.NewReader(tc.in), tc.split, tc.limit), tc.split, multiRecord, tc.limit)
			var err error
			for err == nil {
				_, err = b.next()
			}
			var big *errRecordTooLarge
			if !errors.As(err, &big) {
				t.Fatalf("err %v, want a record too large", err)
			}
		})
	}
	// A line of exactly the limit fits.
	b := newBatcher(newRecordReader(strings.NewReader("0123456789\n"), splitLine, 10), splitLine, singleRecord, 10)
	if p, err := b.next(); err != nil || string(p) != "0123456789" {
		t.Fatalf("%q %v", p, err)
	}
}

func batches(t *testing.T, in, split, strategy string, limit int) []string {
	t.Helper()
	b := newBatcher(newRecordReader(strings.NewReader(in), split, limit), split, strategy, limit)
	var out []string
	for {
		p, err := b.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(p))
	}
}

func TestTransformBatching(t *testing.T) {
	for _, tc := range []struct {
		name, in, split, strategy string
		limit                     int
		want                      []string
	}{
		{"single", "a\nb\nc\n", splitLine, singleRecord, 10, []string{"a", "b", "c"}},
		{"multi fits all", "a\nb\nc\n", splitLine, multiRecord, 10, []string{"a\nb\nc"}},
		// "aaa\nbbb" is 7 bytes: exactly the limit; "\nccc" would pass it.
		{"multi at the limit", "aaa\nbbb\nccc\n", splitLine, multiRecord, 7, []string{"aaa\nbbb", "ccc"}},
		{"multi one over the limit", "aaa\nbbb\nccc\n", splitLine, multiRecord, 6, []string{"aaa", "bbb", "ccc"}},
		{"multi none is one payload", "a\nb\n", splitNone, multiRecord, 10, []string{"a\nb\n"}},
		{"multi recordio back to back", recordIO("a", "b", "c"), splitRecordIO, multiRecord, 36, []string{recordIO("a", "b", "c")}},
		// Each record is 12 bytes framed: 8 of header, 1 of data, 3 of padding.
		{"multi recordio at the limit", recordIO("a", "b", "c"), splitRecordIO, multiRecord, 35, []string{recordIO("a", "b"), recordIO("c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := batches(t, tc.in, tc.split, tc.strategy, tc.limit)
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tc.want) {
				t.Fatalf("payloads %q, want %q", got, tc.want)
			}
		})
	}
}

// memStore is the S3 side of a batchRun, in memory.
type memStore struct {
	mu      sync.Mutex
	in, out map[string]string
	putErr  error
}

func (m *memStore) open(_ context.Context, o transformObject) (io.ReadCloser, error) {
	v, ok := m.in[o.rel]
	if !ok {
		return nil, errors.New("NoSuchKey")
	}
	return io.NopCloser(strings.NewReader(v)), nil
}

func (m *memStore) put(_ context.Context, o transformObject, body io.Reader) error {
	b, err := io.ReadAll(body)
	if err != nil {
		return err
	}
	if m.putErr != nil {
		return m.putErr
	}
	m.mu.Lock()
	m.out[o.rel+".out"] = string(b)
	m.mu.Unlock()
	return nil
}

// echoServer answers each payload with itself, after a delay that makes
// answers come back out of order; a payload containing "poison" gets 500.
func echoServer(t *testing.T, calls *int, mu *sync.Mutex) transformInstance {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		*calls++
		mu.Unlock()
		if r.Header.Get("Content-Type") != "text/csv" || r.Header.Get("Accept") != "text/plain" {
			w.WriteHeader(http.StatusUnsupportedMediaType)
			return
		}
		if bytes.Contains(b, []byte("poison")) {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write([]byte("bad record " + strings.Repeat("z", 2000)))
			return
		}
		time.Sleep(time.Duration(len(b)%3) * time.Millisecond)
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return transformInstance{id: "i-0000000000000001", base: srv.URL}
}

func transformRequest(mod func(*CreateTransformJobRequest)) *CreateTransformJobRequest {
	r := &CreateTransformJobRequest{TransformJobName: "t", ModelName: "m", MaxConcurrentTransforms: 4,
		TransformInput:  &TransformInput{ContentType: "text/csv", SplitType: splitLine},
		TransformOutput: &TransformOutput{S3OutputPath: "s3://out/p", Accept: "text/plain", AssembleWith: assembleLine}}
	if mod != nil {
		mod(r)
	}
	return r
}

func runBatch(t *testing.T, req *CreateTransformJobRequest, store *memStore, objs ...string) (error, int) {
	t.Helper()
	var calls int
	var mu sync.Mutex
	b := &batchRun{req: req, client: http.DefaultClient,
		instances: []transformInstance{echoServer(t, &calls, &mu), echoServer(t, &calls, &mu)},
		stream:    func(id string) string { return "t/" + id }, open: store.open, put: store.put}
	var list []transformObject
	for _, o := range objs {
		list = append(list, transformObject{bucket: "in", key: "p/" + o, rel: o})
	}
	err := b.run(context.Background(), list)
	// A failed run may leave a handler finishing a cancelled request.
	mu.Lock()
	defer mu.Unlock()
	return err, calls
}

func TestTransformBatchRun(t *testing.T) {
	var big strings.Builder
	for i := range 500 {
		fmt.Fprintf(&big, "row-%d,%d\n", i, i*i)
	}
	in := map[string]string{"a.csv": "1,2\n3,4\n", "sub/b.csv": big.String(), "c.csv": "5\n"}
	for _, strategy := range []string{singleRecord, multiRecord} {
		t.Run(strategy, func(t *testing.T) {
			store := &memStore{in: in, out: map[string]string{}}
			err, calls := runBatch(t, transformRequest(func(r *CreateTransformJobRequest) {
				r.BatchStrategy = strategy
				one := 1
				r.MaxPayloadInMB = &one
			}), store, "a.csv", "sub/b.csv", "c.csv")
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range in {
				if store.out[k+".out"] != v {
					t.Fatalf("%s.out: %d bytes, want the %d of the input, in order", k, len(store.out[k+".out"]), len(v))
				}
			}
			if want := 3; strategy == multiRecord && calls != want {
				t.Fatalf("%d requests, want %d (one per object)", calls, want)
			}
			if want := 503; strategy == singleRecord && calls != want {
				t.Fatalf("%d requests, want %d (one per record)", calls, want)
			}
		})
	}
	t.Run("assemble none", func(t *testing.T) {
		store := &memStore{in: map[string]string{"a": "x\ny\n"}, out: map[string]string{}}
		err, _ := runBatch(t, transformRequest(func(r *CreateTransformJobRequest) { r.TransformOutput.AssembleWith = "" }), store, "a")
		if err != nil || store.out["a.out"] != "xy" {
			t.Fatalf("%q %v", store.out["a.out"], err)
		}
	})
	t.Run("model error", func(t *testing.T) {
		store := &memStore{in: map[string]string{"a": "ok\npoison\nok\n"}, out: map[string]string{}}
		zero := 0
		err, calls := runBatch(t, transformRequest(func(r *CreateTransformJobRequest) {
			r.ModelClientConfig = &ModelClientConfig{InvocationsMaxRetries: &zero}
		}), store, "a")
		if err == nil || !strings.Contains(err.Error(), "Received server error (500)") || !strings.Contains(err.Error(), "bad record") ||
			!strings.Contains(err.Error(), "payload 2 of s3://in/p/a") || len(err.Error()) > 1024 {
			t.Fatalf("err %v", err)
		}
		if len(store.out) != 0 {
			t.Fatalf("a failed object's output was written: %v", store.out)
		}
		if calls > 3 {
			t.Fatalf("%d calls: the failure was retried", calls)
		}
	})
	t.Run("retries a server error", func(t *testing.T) {
		store := &memStore{in: map[string]string{"a": "poison\n"}, out: map[string]string{}}
		err, calls := runBatch(t, transformRequest(func(r *CreateTransformJobRequest) { r.MaxConcurrentTransforms = 1 }), store, "a")
		if err == nil || calls != 1+defaultInvocationRetries {
			t.Fatalf("err %v after %d calls, want %d", err, calls, 1+defaultInvocationRetries)
		}
	})
	t.Run("unreadable input", func(t *testing.T) {
		store := &memStore{in: map[string]string{}, out: map[string]string{}}
		err, _ := runBatch(t, transformRequest(nil), store, "missing")
		if err == nil || !strings.HasPrefix(err.Error(), "ClientError: cannot read input object s3://in/p/missing") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("unwritable output", func(t *testing.T) {
		store := &memStore{in: map[string]string{"a": "x\n"}, out: map[string]string{}, putErr: errors.New("AccessDenied")}
		err, _ := runBatch(t, transformRequest(nil), store, "a")
		if err == nil || !strings.HasPrefix(err.Error(), "ClientError: cannot write the output of s3://in/p/a") || !strings.Contains(err.Error(), "AccessDenied") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("object too large for split none", func(t *testing.T) {
		store := &memStore{in: map[string]string{"a": strings.Repeat("x", 1<<20+1)}, out: map[string]string{}}
		one := 1
		err, calls := runBatch(t, transformRequest(func(r *CreateTransformJobRequest) {
			r.TransformInput.SplitType = splitNone
			r.MaxPayloadInMB = &one
		}), store, "a")
		if err == nil || !strings.Contains(err.Error(), "larger than MaxPayloadInMB (1 MB)") || calls != 0 {
			t.Fatalf("err %v, %d calls", err, calls)
		}
	})
}

// fakeTransforms runs transform jobs until released or stopped.
type fakeTransforms struct {
	hold    chan struct{}
	outcome TransformOutcome
	mu      sync.Mutex
	jobs    []*TransformJob
}

func (f *fakeTransforms) RunTransform(ctx context.Context, job *TransformJob, started func()) TransformOutcome {
	f.mu.Lock()
	f.jobs = append(f.jobs, job)
	f.mu.Unlock()
	started()
	select {
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), ErrStopRequested) {
			return TransformOutcome{Status: Stopped}
		}
		return TransformOutcome{Status: Failed, FailureReason: interruptedReason}
	case <-f.hold:
	}
	return f.outcome
}

func transformJob(name string, mod func(map[string]any)) map[string]any {
	j := map[string]any{
		"TransformJobName": name,
		"ModelName":        "m",
		"TransformInput": map[string]any{"DataSource": map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://input/data/"}},
			"ContentType": "text/csv", "SplitType": "Line"},
		"TransformOutput":    map[string]any{"S3OutputPath": "s3://out/pred", "AssembleWith": "Line"},
		"TransformResources": map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1},
		"BatchStrategy":      "MultiRecord",
	}
	if mod != nil {
		mod(j)
	}
	return j
}

func waitTransform(t *testing.T, h *hostEnv, name, status string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, d := h.call("DescribeTransformJob", map[string]string{"TransformJobName": name}, h.admin)
		if d["TransformJobStatus"] == status {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("transform job %s is %v, want %s", name, d["TransformJobStatus"], status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTransformValidation(t *testing.T) {
	h := newHostEnv(t)
	h.svc.ServeTransforms(&fakeTransforms{hold: make(chan struct{})})
	h.model("m")
	h.must("CreateModel", map[string]any{"ModelName": "norole", "PrimaryContainer": map[string]any{"Image": "server:1"}})
	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		msg  string
	}{
		{"bad name", func(j map[string]any) { j["TransformJobName"] = "bad_name" }, "transformJobName"},
		{"no model", func(j map[string]any) { j["ModelName"] = "nope" }, `Could not find model "arn:aws:sagemaker:us-east-1:`},
		{"model without role", func(j map[string]any) { j["ModelName"] = "norole" }, "has no ExecutionRoleArn"},
		{"no input", func(j map[string]any) { delete(j, "TransformInput") }, "transformInput"},
		{"bad uri", func(j map[string]any) {
			j["TransformInput"].(map[string]any)["DataSource"] = map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "http://x"}}
		}, "is not an s3://bucket/prefix URI"},
		{"tfrecord", func(j map[string]any) { j["TransformInput"].(map[string]any)["SplitType"] = "TFRecord" }, "TFRecord is not supported by this convoy"},
		{"bad split", func(j map[string]any) { j["TransformInput"].(map[string]any)["SplitType"] = "Comma" }, "enum value set"},
		{"bad strategy", func(j map[string]any) { j["BatchStrategy"] = "Some" }, "batchStrategy"},
		{"bad assemble", func(j map[string]any) { j["TransformOutput"].(map[string]any)["AssembleWith"] = "Comma" }, "assembleWith"},
		{"payload too big", func(j map[string]any) { j["MaxPayloadInMB"] = 101 }, "maxPayloadInMB"},
		{"payload zero", func(j map[string]any) { j["MaxPayloadInMB"] = 0 }, "MaxPayloadInMB 0"},
		{"input filter", func(j map[string]any) { j["DataProcessing"] = map[string]any{"InputFilter": "$[1:]"} }, "DataProcessing"},
		{"join source", func(j map[string]any) { j["DataProcessing"] = map[string]any{"JoinSource": "Input"} }, "not supported by this convoy yet"},
		{"data capture", func(j map[string]any) { j["DataCaptureConfig"] = map[string]any{"DestinationS3Uri": "s3://x/y"} }, "DataCaptureConfig"},
		{"instances", func(j map[string]any) { j["TransformResources"].(map[string]any)["InstanceCount"] = 0 }, "InstanceCount"},
		{"retries", func(j map[string]any) { j["ModelClientConfig"] = map[string]any{"InvocationsMaxRetries": 4} }, "InvocationsMaxRetries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := h.call("CreateTransformJob", transformJob("job", tc.mod), h.admin)
			if code != 400 || out["__type"] != "ValidationException" || !strings.Contains(fmt.Sprint(out["message"]), tc.msg) {
				t.Fatalf("%d %v, want ValidationException containing %q", code, out, tc.msg)
			}
		})
	}
	// The defaults ("$", None) are accepted.
	h.must("CreateTransformJob", transformJob("defaults", func(j map[string]any) {
		j["DataProcessing"] = map[string]any{"InputFilter": "$", "OutputFilter": "$", "JoinSource": "None"}
	}))
}

func TestTransformLifecycle(t *testing.T) {
	h := newHostEnv(t)
	ft := &fakeTransforms{hold: make(chan struct{}), outcome: TransformOutcome{Status: Completed}}
	h.svc.ServeTransforms(ft)
	h.model("m")

	out := h.must("CreateTransformJob", transformJob("Job-One", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "team", "Value": "ml"}}
	}))
	if arn := out["TransformJobArn"]; arn != "arn:aws:sagemaker:us-east-1:"+h.ids.AccountID()+":transform-job/job-one" {
		t.Fatalf("arn %v", arn)
	}
	if code, out := h.call("CreateTransformJob", transformJob("job-one", nil), h.admin); code != 400 || out["__type"] != "ResourceInUse" {
		t.Fatalf("a name differing only in case: %d %v", code, out)
	}
	// The tags given at creation are the job's, and it takes more.
	arn := out["TransformJobArn"].(string)
	h.must("AddTags", map[string]any{"ResourceArn": arn, "Tags": []any{map[string]any{"Key": "stage", "Value": "nightly"}}})
	if tags := h.must("ListTags", map[string]any{"ResourceArn": arn})["Tags"]; fmt.Sprint(tags) != "[map[Key:stage Value:nightly] map[Key:team Value:ml]]" {
		t.Errorf("ListTags of the transform job: %v", tags)
	}
	d := waitTransform(t, h, "Job-One", InProgress)
	if d["TransformStartTime"] == nil || d["TransformEndTime"] != nil || d["MaxPayloadInMB"] != 6.0 || d["MaxConcurrentTransforms"] != 1.0 {
		t.Fatalf("describe: %v", d)
	}
	if len(ft.jobs) != 1 || ft.jobs[0].Model.ModelName != "m" || ft.jobs[0].Role.ARN != h.role {
		t.Fatalf("runner got %+v", ft.jobs)
	}
	close(ft.hold)
	d = waitTransform(t, h, "Job-One", Completed)
	if d["TransformEndTime"] == nil || d["FailureReason"] != nil {
		t.Fatalf("describe: %v", d)
	}
	if code, out := h.call("StopTransformJob", map[string]string{"TransformJobName": "Job-One"}, h.admin); code != 400 || out["__type"] != "ValidationException" {
		t.Fatalf("stop a completed job: %d %v", code, out)
	}

	// Stop.
	ft.hold = make(chan struct{})
	h.must("CreateTransformJob", transformJob("job-two", nil))
	waitTransform(t, h, "job-two", InProgress)
	h.must("StopTransformJob", map[string]string{"TransformJobName": "job-two"})
	waitTransform(t, h, "job-two", Stopped)

	// Failure.
	ft.outcome = TransformOutcome{Status: Failed, FailureReason: "AlgorithmError: boom"}
	h.must("CreateTransformJob", transformJob("job-three", nil))
	waitTransform(t, h, "job-three", InProgress)
	close(ft.hold)
	if d := waitTransform(t, h, "job-three", Failed); d["FailureReason"] != "AlgorithmError: boom" {
		t.Fatalf("describe: %v", d)
	}

	// List: filters, sort, pages.
	l := h.must("ListTransformJobs", map[string]any{"StatusEquals": "Completed"})
	if s := l["TransformJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["TransformJobName"] != "Job-One" {
		t.Fatalf("list Completed: %v", l)
	}
	l = h.must("ListTransformJobs", map[string]any{"NameContains": "JOB-T", "SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 1})
	s := l["TransformJobSummaries"].([]any)
	if len(s) != 1 || s[0].(map[string]any)["TransformJobName"] != "job-three" || l["NextToken"] == nil {
		t.Fatalf("list page 1: %v", l)
	}
	l = h.must("ListTransformJobs", map[string]any{"NameContains": "JOB-T", "SortBy": "Name", "SortOrder": "Ascending", "NextToken": l["NextToken"]})
	if s := l["TransformJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["TransformJobName"] != "job-two" || l["NextToken"] != nil {
		t.Fatalf("list page 2: %v", l)
	}

	// A job running when convoy restarts is Failed, with the reason.
	ft.hold = make(chan struct{})
	h.must("CreateTransformJob", transformJob("job-four", nil))
	waitTransform(t, h, "job-four", InProgress)
	h.restart()
	d = waitTransform(t, h, "job-four", Failed)
	if !strings.Contains(fmt.Sprint(d["FailureReason"]), "convoy stopped while this job was running") {
		t.Fatalf("after restart: %v", d)
	}
	if code, out := h.call("DescribeTransformJob", map[string]string{"TransformJobName": "nope"}, h.admin); code != 400 || out["__type"] != "ValidationException" {
		t.Fatalf("describe a missing job: %d %v", code, out)
	}
	// Without ServeTransforms (the restarted service has none), creates are refused.
	if code, out := h.call("CreateTransformJob", transformJob("job-five", nil), h.admin); code != 400 || !strings.Contains(fmt.Sprint(out["message"]), "cannot run transform jobs") {
		t.Fatalf("without a runner: %d %v", code, out)
	}
}

// CreateTransformJob is authorized on the job's ARN with the instance
// type and KMS keys as condition keys, and create-time tags need AddTags;
// no iam:PassRole is asked (CreateModel asked it).
func TestTransformAuthorization(t *testing.T) {
	h := newHostEnv(t)
	ft := &fakeTransforms{hold: make(chan struct{})}
	defer close(ft.hold)
	h.svc.ServeTransforms(ft)
	h.model("m")
	ctx := context.Background()
	h.ids.CreateUser(ctx, "dev", "")
	k, _, _ := h.ids.CreateAccessKey(ctx, "dev")
	dev, _ := h.ids.UserPrincipal(ctx, "dev", k.ID)
	if code, out := h.call("CreateTransformJob", transformJob("j1", nil), dev); code != 403 || out["__type"] != "AccessDeniedException" {
		t.Fatalf("no permission: %d %v", code, out)
	}
	h.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "sm", `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"sagemaker:CreateTransformJob","Resource":"arn:aws:sagemaker:*:*:transform-job/j*",
		 "Condition":{"ForAllValues:StringEquals":{"sagemaker:InstanceTypes":["ml.m5.large"]},"StringEqualsIfExists":{"sagemaker:OutputKmsKey":"good"}}},
		{"Effect":"Deny","Action":"sagemaker:AddTags","Resource":"*"}]}`)
	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		code int
	}{
		{"allowed", nil, 200},
		{"other name", func(j map[string]any) { j["TransformJobName"] = "other" }, 403},
		{"other instance type", func(j map[string]any) { j["TransformResources"].(map[string]any)["InstanceType"] = "ml.p4d.24xlarge" }, 403},
		{"allowed output key", func(j map[string]any) { j["TransformOutput"].(map[string]any)["KmsKeyId"] = "good" }, 200},
		{"other output key", func(j map[string]any) { j["TransformOutput"].(map[string]any)["KmsKeyId"] = "bad" }, 403},
		{"tags without AddTags", func(j map[string]any) { j["Tags"] = []any{map[string]any{"Key": "a", "Value": "b"}} }, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			job := transformJob("j-"+strings.ReplaceAll(tc.name, " ", "-"), tc.mod)
			if code, out := h.call("CreateTransformJob", job, dev); code != tc.code {
				t.Fatalf("%d %v, want %d", code, out, tc.code)
			}
		})
	}
}
