package api

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/bench/procstat"
)

// pattern is the content of every object: 1 MiB of pseudo-random bytes,
// repeated. Nothing on either path compresses or deduplicates, so its
// repetition costs nothing it should not.
var pattern = func() []byte {
	b := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{'c', 'o', 'n', 'v', 'o', 'y'}).Read(b)
	return b
}()

// patternReader yields the first n bytes of pattern repeated, without
// holding them: a 1 GiB body costs 1 MiB of memory.
type patternReader struct{ off, n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	total := 0
	for total < len(p) {
		total += copy(p[total:], pattern[(r.off+int64(total))%int64(len(pattern)):])
	}
	r.off += int64(total)
	return total, nil
}

var (
	md5Mu   sync.Mutex
	md5Memo = map[int64]string{}
)

// patternETag is the ETag S3 gives an object of the first n bytes of the
// pattern: the hex MD5 in quotes. It is computed once per size.
func patternETag(n int64) string {
	md5Mu.Lock()
	defer md5Mu.Unlock()
	if e, ok := md5Memo[n]; ok {
		return e
	}
	h := md5.New()
	io.CopyBuffer(h, &patternReader{n: n}, make([]byte, copyBufferSize))
	md5Memo[n] = fmt.Sprintf("%q", hex.EncodeToString(h.Sum(nil)))
	return md5Memo[n]
}

const stsBody = "Action=GetCallerIdentity&Version=2011-06-15"

var stsBodyHash = sha256Hex(stsBody)

// callerIdentityRequest is STS GetCallerIdentity as the AWS SDKs send it:
// a form POST to /, signed (with a fresh date) for service sts.
func (e *env) callerIdentityRequest(ctx context.Context, t *target) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.endpoint+"/", strings.NewReader(stsBody))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
	return req, e.signNow(req, t, stsBodyHash, "sts")
}

// callerIdentity sends one GetCallerIdentity and reads the answer.
func (e *env) callerIdentity(ctx context.Context, t *target, p proto) error {
	req, err := e.callerIdentityRequest(ctx, t)
	if err != nil {
		return err
	}
	resp, err := t.http[p].Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GetCallerIdentity: %w %s", errStatus, resp.Status)
	}
	return err
}

// putLarge PUTs n bytes of the pattern to bucket/key as the aws CLI v2 does
// over HTTPS: one request, x-amz-content-sha256 UNSIGNED-PAYLOAD, here with
// SSE-KMS under the bench key. The body streams from patternReader. It
// returns the number of bytes sent and checks convoy's ETag (the MD5 of
// what it stored).
func (e *env) putLarge(ctx context.Context, t *target, p proto, key string, n int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, t.endpoint+"/"+e.bucket+"/"+key, &patternReader{n: n})
	if err != nil {
		return 0, err
	}
	req.ContentLength = n
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	req.Header.Set("X-Amz-Server-Side-Encryption", "aws:kms")
	req.Header.Set("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id", e.kmsKey)
	if err := e.signNow(req, t, "UNSIGNED-PAYLOAD", "s3"); err != nil {
		return 0, err
	}
	resp, err := t.http[p].Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("PUT %d bytes: %w %s\n%s", n, errStatus, resp.Status, body)
	}
	// An SSE-KMS object's ETag is opaque (not an MD5), as on S3, so it says
	// nothing about the bytes; that convoy stores exactly what it was sent
	// is what the e2e tests check (cmp after a round trip).
	return n, nil
}

// getRequest is a signed GET of bucket/key, as the SDK signs it.
func (e *env) getRequest(ctx context.Context, t *target, key string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.endpoint+"/"+e.bucket+"/"+key, nil)
	if err != nil {
		return nil, err
	}
	const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	req.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	return req, e.signNow(req, t, emptySHA256, "s3")
}

// getLarge GETs bucket/key, streams the body to io.Discard and checks that
// n bytes came.
func (e *env) getLarge(ctx context.Context, t *target, p proto, key string, n int64) (int64, error) {
	req, err := e.getRequest(ctx, t, key)
	if err != nil {
		return 0, err
	}
	resp, err := t.http[p].Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("GET: %w %s\n%s", errStatus, resp.Status, body)
	}
	got, err := io.CopyBuffer(discard{}, resp.Body, make([]byte, copyBufferSize))
	if err != nil {
		return got, err
	}
	if got != n {
		return got, fmt.Errorf("GET: %d bytes, want %d", got, n)
	}
	return got, nil
}

// smallSize is the object size of the small-PUT workload.
const smallSize = 4 << 10

// putSmall PUTs a 4 KiB object with the AWS SDK's S3 client (harness.S3's,
// over HTTP/2), with the SDK's defaults: its checksum, its signing, no
// explicit encryption (convoy then encrypts under its master key).
func (e *env) putSmall(ctx context.Context, t *target, key string) error {
	_, err := t.s3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(e.bucket),
		Key:    aws.String(key),
		Body:   bytes.NewReader(pattern[:smallSize]),
	})
	return err
}

// result is what a burst of operations against one server did.
type result struct {
	ops     int64
	bytes   int64
	elapsed time.Duration
	// serverCPU and clientCPU are the CPU time the server process and this
	// process spent meanwhile; serverCPU is -1 when unknown. otherCPU is
	// what the rest of the machine used (-1 when unknown): the machine is
	// shared, so this is the noise to read the figures against.
	serverCPU, clientCPU, otherCPU time.Duration
	errs                           int64
	firstErr                       error
}

func (r result) opsPerSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }
func (r result) mbPerSec() float64  { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }
func (r result) serverCPUPerOp() float64 {
	if r.serverCPU < 0 || r.ops == 0 {
		return -1
	}
	return float64(r.serverCPU.Microseconds()) / float64(r.ops)
}

// err reports the first failed operation, if any failed.
func (r result) err() error {
	if r.errs == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d operations failed; first: %w", r.errs, r.errs+r.ops, r.firstErr)
}

// hammer runs op from workers goroutines: n operations in all if n > 0,
// otherwise as many as fit in d. op returns the bytes it moved. i numbers
// the operations from 0.
func hammer(pid, workers int, n int64, d time.Duration, op func(i int64) (int64, error)) result {
	var next, done, moved, errs atomic.Int64
	var firstErr atomic.Pointer[error]
	cpu0, ok0 := procstat.ProcCPU(pid)
	self0 := procstat.SelfCPU()
	busy0, okBusy0 := procstat.MachineBusy()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if n > 0 && i >= n || n <= 0 && !time.Now().Before(deadline) {
					return
				}
				b, err := op(i)
				if err != nil {
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				done.Add(1)
				moved.Add(b)
			}
		})
	}
	wg.Wait()
	r := result{ops: done.Load(), bytes: moved.Load(), elapsed: time.Since(start), clientCPU: procstat.SelfCPU() - self0,
		serverCPU: -1, otherCPU: -1, errs: errs.Load()}
	busy1, okBusy1 := procstat.MachineBusy()
	if cpu1, ok1 := procstat.ProcCPU(pid); ok0 && ok1 {
		r.serverCPU = cpu1 - cpu0
		if okBusy0 && okBusy1 {
			r.otherCPU = max(busy1-busy0-r.serverCPU-r.clientCPU, 0)
		}
	}
	if p := firstErr.Load(); p != nil {
		r.firstErr = *p
	}
	return r
}
