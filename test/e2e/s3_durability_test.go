package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"convoy/test/e2e/harness"
)

// objectFiles counts the object files under the data dir (tmp included).
func objectFiles(t *testing.T, dataDir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(filepath.Join(dataDir, "objects"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func body(seed uint64, size int) []byte {
	r := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// kill -9 at random moments while PUTs are in flight, 100 times: every PUT
// that was acknowledged reads back byte-identical, nothing half-written is
// ever visible, and when everything is deleted no file is left.
func TestKillNineNeverLosesAcknowledgedPuts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	cycles := 100
	acked := map[string][32]byte{}    // key → sha256 of the acknowledged body
	inflight := map[string][32]byte{} // key → sha256 of a body whose PUT did not return
	rng := mrand.New(mrand.NewPCG(1, 2))
	for cycle := 0; cycle < cycles; cycle++ {
		c := harness.Start(t, harness.Options{DataDir: dir})
		client := c.S3(t)
		ctx := harness.Context(t)
		if cycle == 0 {
			if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("torture")}); err != nil {
				t.Fatal(err)
			}
		}
		// What was acknowledged in the last cycle, and a sample of older
		// PUTs, is there, intact (everything is checked once at the end).
		for key, sum := range acked {
			if !strings.HasPrefix(key, fmt.Sprintf("c%03d/", cycle-1)) && rng.IntN(20) != 0 {
				continue
			}
			checkObject(t, ctx, client, cycle, key, sum)
		}
		// Whatever is listed is complete: acknowledged, or an in-flight
		// PUT's whole body.
		list, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("torture")})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range list.Contents {
			key := *o.Key
			if _, ok := acked[key]; ok {
				continue
			}
			sum, ok := inflight[key]
			if !ok {
				t.Fatalf("cycle %d: unknown object %s", cycle, key)
			}
			out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("torture"), Key: aws.String(key)})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(out.Body)
			out.Body.Close()
			if sha256.Sum256(got) != sum {
				t.Fatalf("cycle %d: in-flight %s is visible but partial (%d bytes)", cycle, key, len(got))
			}
			acked[key] = sum // it is durable now
		}
		inflight = map[string][32]byte{}

		// Concurrent PUTs, then kill -9 at a random moment.
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for i := 0; ; i++ {
					key := fmt.Sprintf("c%03d/w%d/%03d", cycle, w, i)
					b := body(uint64(cycle*1000+w*100+i), 1000+int(uint64(cycle*7919+w*131+i*17)%200000))
					sum := sha256.Sum256(b)
					mu.Lock()
					inflight[key] = sum
					mu.Unlock()
					_, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("torture"), Key: aws.String(key), Body: bytes.NewReader(b)})
					mu.Lock()
					if err == nil {
						acked[key] = sum
						delete(inflight, key)
					}
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}(w)
		}
		time.Sleep(time.Duration(20+rng.IntN(250)) * time.Millisecond)
		c.Kill()
		wg.Wait()
	}
	if len(acked) < cycles {
		t.Fatalf("only %d PUTs acknowledged in %d cycles: the test did not exercise the store", len(acked), cycles)
	}
	// Every acknowledged PUT, once more; then delete everything: no file may
	// remain once garbage is collected.
	c := harness.Start(t, harness.Options{DataDir: dir})
	client := c.S3(t)
	ctx := harness.Context(t)
	for key, sum := range acked {
		checkObject(t, ctx, client, cycles, key, sum)
	}
	for {
		list, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("torture")})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Contents) == 0 {
			break
		}
		for _, o := range list.Contents {
			if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("torture"), Key: o.Key}); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.Stop()
	harness.Start(t, harness.Options{DataDir: dir}) // collects garbage at start
	if n := objectFiles(t, dir); n != 0 {
		t.Fatalf("%d object files left after deleting every object", n)
	}
	t.Logf("%d acknowledged PUTs survived %d kill -9 cycles", len(acked), cycles)
}

func checkObject(t *testing.T, ctx context.Context, client *s3.Client, cycle int, key string, sum [32]byte) {
	t.Helper()
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("torture"), Key: aws.String(key)})
	if err != nil {
		t.Fatalf("cycle %d: acknowledged %s is gone: %v", cycle, key, err)
	}
	got, err := io.ReadAll(out.Body)
	out.Body.Close()
	if err != nil || sha256.Sum256(got) != sum {
		t.Fatalf("cycle %d: acknowledged %s reads back different (%d bytes, %v)", cycle, key, len(got), err)
	}
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// Bad requests get S3's error codes and store nothing.
func TestS3BadInputStoresNothing(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	client := c.S3(t)
	ctx := harness.Context(t)
	for _, name := range []string{"UPPER", "ab", "a_b", "-ab", "192.168.1.1", "a..b", strings.Repeat("a", 64)} {
		_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
		if apiCode(err) != "InvalidBucketName" {
			t.Errorf("bucket %q: %v", name, err)
		}
	}
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("bad-input")}); err != nil {
		t.Fatal(err)
	}
	put := func(key string, body []byte, mod func(*s3.PutObjectInput)) error {
		in := &s3.PutObjectInput{Bucket: aws.String("bad-input"), Key: aws.String(key), Body: bytes.NewReader(body)}
		if mod != nil {
			mod(in)
		}
		_, err := client.PutObject(ctx, in)
		return err
	}
	for _, tc := range []struct {
		name, key, code string
		mod             func(*s3.PutObjectInput)
	}{
		{"traversal", "../etc/passwd", "InvalidArgument", nil},
		{"inner traversal", "a/../../b", "InvalidArgument", nil},
		{"2 KB key", strings.Repeat("k", 2048), "KeyTooLongError", nil},
		{"wrong Content-MD5", "md5", "BadDigest", func(in *s3.PutObjectInput) { in.ContentMD5 = aws.String("1B2M2Y8AsgTpgAmY7PhCfg==") }},
		{"invalid Content-MD5", "md5b", "InvalidDigest", func(in *s3.PutObjectInput) { in.ContentMD5 = aws.String("not-base64") }},
		{"wrong CRC32", "crc", "BadDigest", func(in *s3.PutObjectInput) { in.ChecksumCRC32 = aws.String("AAAAAA==") }},
		{"SSE-C", "ssec", "NotImplemented", func(in *s3.PutObjectInput) {
			in.SSECustomerAlgorithm = aws.String("AES256")
			in.SSECustomerKey = aws.String("MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=")
			in.SSECustomerKeyMD5 = aws.String("aCHqZ4cprd9i2xY6y3XhOg==")
		}},
	} {
		err := put(tc.key, []byte("some body"), tc.mod)
		if code := apiCode(err); code != tc.code {
			t.Errorf("%s: got %q (%v), want %s", tc.name, code, err, tc.code)
		}
	}
	// Multipart: bad part numbers, unknown upload, malformed XML.
	up, err := client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String("bad-input"), Key: aws.String("mp")})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int32{0, 10001} {
		_, err := client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"), UploadId: up.UploadId,
			PartNumber: aws.Int32(n), Body: bytes.NewReader([]byte("x"))})
		if apiCode(err) != "InvalidArgument" {
			t.Errorf("part number %d: %v", n, err)
		}
	}
	p1, err := client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"), UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: bytes.NewReader([]byte("small part"))})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"), UploadId: up.UploadId,
		PartNumber: aws.Int32(2), Body: bytes.NewReader([]byte("last"))})
	if err != nil {
		t.Fatal(err)
	}
	part := func(n int32, etag *string) types.CompletedPart {
		return types.CompletedPart{PartNumber: aws.Int32(n), ETag: etag}
	}
	complete := func(parts ...types.CompletedPart) error {
		_, err := client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"),
			UploadId: up.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
		return err
	}
	if code := apiCode(complete(part(2, p2.ETag), part(1, p1.ETag))); code != "InvalidPartOrder" {
		t.Errorf("parts out of order: %s", code)
	}
	if code := apiCode(complete(part(1, aws.String(`"00000000000000000000000000000000"`)), part(2, p2.ETag))); code != "InvalidPart" {
		t.Errorf("wrong part ETag: %s", code)
	}
	if code := apiCode(complete(part(1, p1.ETag), part(2, p2.ETag))); code != "EntityTooSmall" {
		t.Errorf("small first part: %s", code)
	}
	_, err = client.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"), UploadId: aws.String("nope"),
		PartNumber: aws.Int32(1), Body: bytes.NewReader([]byte("x"))})
	if apiCode(err) != "NoSuchUpload" {
		t.Errorf("unknown upload: %v", err)
	}
	if _, err := client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String("bad-input"), Key: aws.String("mp"), UploadId: up.UploadId}); err != nil {
		t.Fatal(err)
	}
	// Raw requests the SDK would not send.
	for _, tc := range []struct {
		name, method, path, body, code string
		status                         int
	}{
		{"malformed delete XML", "POST", "/bad-input?delete", "<Delete><Object><Key>x", "MalformedXML", 400},
		{"malformed complete XML", "POST", "/bad-input/k?uploadId=x", "not xml", "NoSuchUpload", 404},
		{"range past the end", "GET", "/bad-input/none", "", "NoSuchKey", 404},
	} {
		status, text := signedRequest(t, c, tc.method, tc.path, []byte(tc.body), nil)
		if status != tc.status || !strings.Contains(text, "<Code>"+tc.code+"</Code>") {
			t.Errorf("%s: %d %s", tc.name, status, text)
		}
	}
	// A body shorter than its Content-Length, then the client goes away.
	truncatedPut(t, c, "/bad-input/truncated", []byte("only a part"), 1000)
	list, err := client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("bad-input")})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Contents) != 0 {
		t.Fatalf("bad requests stored %d objects, first %s", len(list.Contents), *list.Contents[0].Key)
	}
	time.Sleep(200 * time.Millisecond)
	if n := objectFiles(t, c.DataDir); n != 0 {
		t.Fatalf("bad requests left %d files on disk", n)
	}
}
