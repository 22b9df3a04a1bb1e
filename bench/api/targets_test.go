package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// proto is the HTTP version a client speaks.
type proto string

const (
	h1 proto = "http1.1"
	h2 proto = "h2"
)

// target is one server under test, as the client sees it.
type target struct {
	name     string // "convoy" or "bare"
	endpoint string // https://127.0.0.1:port
	pid      int    // 0 when unknown: no server CPU figures then
	http     map[proto]*http.Client
	s3       *s3.Client // the SDK client of harness.S3, pointed at this target
	// creds sign requests to this target when set; otherwise env.creds
	// (convoy's admin key, which the bare server gets too).
	creds *aws.Credentials
}

// env is convoy and the bare server, running, with what a client needs to
// sign for them: both get the very same signed requests (the bare server
// reads no signature).
type env struct {
	targets []*target // convoy first, then bare
	creds   aws.Credentials
	region  string
	signer  *v4.Signer
	bucket  string
	kmsKey  string // key ID of the SSE-KMS key the large PUT names
	tls     string // what the last check negotiated: version, suite, group
	dataDir string // convoy's --data
	pemPath string // convoy's serving key and chain, which the bare servers use
}

// setup starts convoy (harness.Start, default modern profile) and the bare
// server on convoy's own certificate, creates a bucket and a KMS key in
// convoy, and checks that both servers answer every workload and speak the
// same protocol versions.
func setup(tb testing.TB) *env {
	tb.Helper()
	c := harness.Start(tb, harness.Options{})
	pid, _ := strconv.Atoi(c.Env["CONVOY_PID"])
	e := newEnv(tb, c, pid)
	pemPath := filepath.Join(c.DataDir, "pki", "server.pem")
	b := startBare(tb, pemPath)
	bareCfg := c.AWSConfig(tb)
	bareCfg.BaseEndpoint = aws.String("https://" + b.addr)
	e.targets = append(e.targets, &target{name: "bare", endpoint: "https://" + b.addr, pid: b.pid,
		http: e.targets[0].http, s3: s3.NewFromConfig(bareCfg, func(o *s3.Options) {
			o.UsePathStyle = true
			o.RetryMaxAttempts = 1
		})})
	e.dataDir, e.pemPath = c.DataDir, pemPath
	e.prepare(tb)
	return e
}

// newEnv returns the environment of the running convoy c (whose process is
// pid, 0 if unknown) as the only target.
func newEnv(tb testing.TB, c *harness.Convoy, pid int) *env {
	tb.Helper()
	cfg := c.AWSConfig(tb)
	creds, err := cfg.Credentials.Retrieve(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{creds: creds, region: cfg.Region, signer: v4.NewSigner(), bucket: "bench"}
	// One HTTP client per protocol, shared by the targets: the transport
	// keeps connections per host, so it treats both alike.
	pool := c.CAPool(tb)
	clients := map[proto]*http.Client{h1: newHTTPClient(tb, pool, h1), h2: newHTTPClient(tb, pool, h2)}
	e.targets = []*target{{name: "convoy", endpoint: c.Endpoint, pid: pid, http: clients, s3: c.S3(tb)}}
	return e
}

// prepare creates the bucket and the KMS key in convoy and sends every
// workload once to every target.
func (e *env) prepare(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	conv := e.targets[0]
	if _, err := conv.s3.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(e.bucket)}); err != nil {
		tb.Fatalf("create bucket: %v", err)
	}
	var err error
	if e.kmsKey, err = e.createKMSKey(ctx, conv.endpoint, conv.http[h1]); err != nil {
		tb.Fatalf("create KMS key: %v", err)
	}
	for _, t := range e.targets {
		for _, p := range []proto{h1, h2} {
			if err := e.check(ctx, t, p); err != nil {
				tb.Fatalf("%s over %s: %v", t.name, p, err)
			}
			tb.Logf("%-6s %-7s at %s: %s", t.name, p, t.endpoint, e.tls)
		}
	}
}

// newHTTPClient is the client both servers get for proto: tlsconf.Modern,
// trusting convoy's CA, with keep-alive connections for 16 workers and
// buffers as large as the servers' copy buffers, so that the client sends
// full 16 KiB TLS records and is not what limits a large transfer.
func newHTTPClient(tb testing.TB, pool *x509.CertPool, p proto) *http.Client {
	tlsCfg := tlsconf.Client(tlsconf.Modern, pool, "127.0.0.1")
	tr := &http.Transport{
		TLSClientConfig:     tlsCfg,
		MaxIdleConnsPerHost: 64,
		WriteBufferSize:     copyBufferSize,
		ReadBufferSize:      copyBufferSize,
	}
	switch p {
	case h2:
		tr.ForceAttemptHTTP2 = true
	case h1:
		tlsCfg.NextProtos = []string{"http/1.1"}
	}
	tb.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Minute}
}

// check sends one request of each workload (with a 1 MiB object for the
// large ones, whose bytes it compares) and checks the protocol version.
func (e *env) check(ctx context.Context, t *target, p proto) error {
	c := t.http[p]
	req, err := e.callerIdentityRequest(ctx, t)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("<Arn>arn:aws:")) {
		return fmt.Errorf("GetCallerIdentity: %s\n%s", resp.Status, body)
	}
	if want := map[proto]int{h1: 1, h2: 2}[p]; resp.ProtoMajor != want || resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		return fmt.Errorf("GetCallerIdentity went over %s, want %s over TLS 1.3", resp.Proto, p)
	}
	e.tls = fmt.Sprintf("TLS 1.3, %s, %s", tls.CipherSuiteName(resp.TLS.CipherSuite), resp.TLS.CurveID)
	const size = 1 << 20
	key := "check/" + string(p)
	if _, err := e.putLarge(ctx, t, p, key, size); err != nil {
		return err
	}
	req, err = e.getRequest(ctx, t, key)
	if err != nil {
		return err
	}
	resp, err = c.Do(req)
	if err != nil {
		return err
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	want, _ := io.ReadAll(&patternReader{n: size})
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
		return fmt.Errorf("GET of a 1 MiB object: %s, %d bytes, equal %v", resp.Status, len(body), bytes.Equal(body, want))
	}
	if resp.Header.Get("X-Amz-Server-Side-Encryption") != "aws:kms" && t.name == "convoy" {
		return fmt.Errorf("GET of the SSE-KMS object says x-amz-server-side-encryption %q", resp.Header.Get("X-Amz-Server-Side-Encryption"))
	}
	return e.putSmall(ctx, t, "check/small")
}

// signNow signs req for t (nil: convoy) with the admin key for service, as
// the AWS SDK's signer does.
func (e *env) signNow(req *http.Request, t *target, payloadHash, service string) error {
	creds := e.creds
	if t != nil && t.creds != nil {
		creds = *t.creds
	}
	return e.signer.SignHTTP(req.Context(), creds, req, payloadHash, service, e.region, time.Now())
}

// createKMSKey creates a symmetric key through the KMS JSON 1.1 API and
// returns its ID.
func (e *env) createKMSKey(ctx context.Context, endpoint string, c *http.Client) (string, error) {
	body := `{"Description":"bench/api SSE-KMS"}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint+"/", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService.CreateKey")
	if err := e.signNow(req, nil, sha256Hex(body), "kms"); err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct{ KeyMetadata struct{ KeyId string } }
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("CreateKey: %s\n%s", resp.Status, raw)
	}
	if err := json.Unmarshal(raw, &out); err != nil || out.KeyMetadata.KeyId == "" {
		return "", fmt.Errorf("CreateKey answered %s (%v)", raw, err)
	}
	return out.KeyMetadata.KeyId, nil
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
