package sigv4

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The tests in this file prove compatibility with the real clients: botocore
// (boto3, aws CLI v1) must be installed — scripts/test.sh installs it — and
// its absence fails the tests rather than skipping them.

func requireBotocore(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is not installed; these tests need it with botocore (apt-get install python3-boto3, or pip install boto3)")
	}
	if out, err := exec.Command("python3", "-c", "import botocore").CombinedOutput(); err != nil {
		t.Fatalf("botocore is not importable (apt-get install python3-boto3, or pip install boto3): %v\n%s", err, out)
	}
}

type pyRequest struct {
	Name    string      `json:"name"`
	Method  string      `json:"method"`
	URL     string      `json:"url"`
	Headers [][2]string `json:"headers"`
	Body    string      `json:"body"`
}

// wire rebuilds the request botocore would send (urllib3 adds Host from the
// URL; a Transfer-Encoding: chunked body is HTTP-chunked) and parses it as
// the server would.
func (p pyRequest) wire(t *testing.T, mutateBody func([]byte)) *http.Request {
	t.Helper()
	u, err := url.Parse(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	target := p.URL[len(u.Scheme)+len("://")+len(u.Host):]
	if target == "" || target[0] == '?' {
		target = "/" + target
	}
	body, err := base64.StdEncoding.DecodeString(p.Body)
	if err != nil {
		t.Fatal(err)
	}
	if mutateBody != nil {
		mutateBody(body)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", p.Method, target, u.Host)
	chunked, hasLength := false, false
	for _, h := range p.Headers {
		chunked = chunked || strings.EqualFold(h[0], "Transfer-Encoding")
		hasLength = hasLength || strings.EqualFold(h[0], "Content-Length")
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	if !chunked && !hasLength && len(body) > 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	if chunked {
		w := httputil.NewChunkedWriter(&b)
		w.Write(body)
		w.Close()
		b.WriteString("\r\n")
	} else {
		b.Write(body)
	}
	return parseRaw(t, b.String())
}

// TestBotocoreSigned verifies requests signed by botocore's SigV4Auth,
// S3SigV4Auth, SigV4QueryAuth and S3SigV4QueryAuth, and aws-chunked bodies
// written by its AwsChunkedWrapper with CRC32, SHA256 and SHA1 trailers.
func TestBotocoreSigned(t *testing.T) {
	requireBotocore(t)
	out, err := exec.Command("python3", "testdata/botocore_sign.py", akid, secret, tempAKID, tempSecret, tokenTemp).Output()
	if err != nil {
		t.Fatalf("botocore_sign.py: %v\n%s", err, stderrOf(err))
	}
	var reqs []pyRequest
	if err := json.Unmarshal(out, &reqs); err != nil {
		t.Fatal(err)
	}
	if len(reqs) < 15 {
		t.Fatalf("only %d requests from botocore", len(reqs))
	}
	v := &Verifier{Lookup: testLookup}
	for _, p := range reqs {
		t.Run(p.Name, func(t *testing.T) {
			r := p.wire(t, nil)
			res, err := v.Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v\ncanonical request:\n%s", err, canonicalOf(err))
			}
			got, err := readBody(t, r.Body)
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if strings.HasPrefix(p.Name, "aws-chunked") {
				if algo, sum := res.ChecksumValue(); algo == "" || sum == "" || int64(len(got)) != res.DecodedContentLength {
					t.Errorf("checksum %q %q, %d bytes of %d", algo, sum, len(got), res.DecodedContentLength)
				}
			}
			if strings.Contains(p.Name, "presigned") != res.Presigned {
				t.Errorf("Presigned = %v", res.Presigned)
			}

			// The same request with one body byte changed must fail.
			if len(p.Body) == 0 || strings.Contains(p.Name, "empty body") {
				return
			}
			r = p.wire(t, func(b []byte) { b[len(b)/2] ^= 0x20 })
			_, err = v.Verify(r)
			if err == nil {
				_, err = readBody(t, r.Body)
			}
			if err == nil {
				t.Fatal("a changed body byte went unnoticed")
			}
			t.Logf("changed body byte: %v", err)
		})
	}
}

// environWithoutAWS is the environment without AWS_* variables (a profile,
// endpoint or session token of the developer's), so that the clients see
// only what a test sets.
func environWithoutAWS() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	return env
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

// fakeAWS is a TLS server that verifies every request, reads its body to
// EOF, and answers with just enough for the SDKs to parse.
type fakeAWS struct {
	*httptest.Server
	v      *Verifier
	caFile string

	mu       sync.Mutex
	failures []string
	seen     []string // "service method path checksum=..." per verified request
}

func newFakeAWS(t *testing.T) *fakeAWS {
	f := &fakeAWS{v: &Verifier{Lookup: testLookup}}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	f.caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Certificate().Raw})
	if err := os.WriteFile(f.caFile, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeAWS) fail(w http.ResponseWriter, r *http.Request, service string, err error) {
	f.mu.Lock()
	f.failures = append(f.failures, fmt.Sprintf("%s %s: %v\n%s", r.Method, r.RequestURI, err, canonicalOf(err)))
	f.mu.Unlock()
	code, status := "InternalError", 500
	if e, ok := err.(*Error); ok {
		code, status = e.Code(service), e.Status(service)
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "<Error><Code>%s</Code><Message>%s</Message></Error>", code, err)
}

func (f *fakeAWS) serve(w http.ResponseWriter, r *http.Request) {
	service := "s3"
	if a := r.Header.Get("Authorization"); a != "" {
		if parts := strings.Split(a, "/"); len(parts) > 3 {
			service = parts[3]
		}
	}
	res, err := f.v.Verify(r)
	if err != nil {
		f.fail(w, r, service, err)
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		f.fail(w, r, service, err)
		return
	}
	algo, sum := res.ChecksumValue()
	f.mu.Lock()
	f.seen = append(f.seen, fmt.Sprintf("%s %s %s len=%d checksum=%s:%s presigned=%v payload=%s", res.Service, r.Method, r.URL.Path, len(body), algo, sum, res.Presigned, res.PayloadHash))
	f.mu.Unlock()

	switch res.Service {
	case "s3":
		w.Header().Set("Content-Type", "application/xml")
		switch {
		case r.Method == "POST" && r.URL.Query().Has("delete"):
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"></DeleteResult>`)
		case r.Method == "GET" && r.URL.Query().Get("list-type") == "2":
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bucket</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>`)
		case r.Method == "PUT":
			w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
		default:
			io.WriteString(w, "object")
		}
	case "sts":
		w.Header().Set("Content-Type", "text/xml")
		io.WriteString(w, `<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult><Arn>arn:aws:iam::000000000000:user/test</Arn><UserId>AIDATEST</UserId><Account>000000000000</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></GetCallerIdentityResponse>`)
	case "iam":
		w.Header().Set("Content-Type", "text/xml")
		io.WriteString(w, `<ListUsersResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><ListUsersResult><Users/><IsTruncated>false</IsTruncated></ListUsersResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></ListUsersResponse>`)
	case "sagemaker":
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		io.WriteString(w, `{"TrainingJobSummaries":[]}`)
	case "kms":
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		io.WriteString(w, `{"Keys":[],"Truncated":false}`)
	default:
		w.WriteHeader(404)
	}
}

// check fails t unless every request was verified, but for those whose
// failure contains one of rejected (each of which must have been rejected),
// and a verified request matches each of wantSeen.
func (f *fakeAWS) check(t *testing.T, rejected []string, wantSeen ...string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	found := make([]bool, len(rejected))
	for _, fl := range f.failures {
		expected := false
		for i, r := range rejected {
			if strings.Contains(fl, r) {
				expected, found[i] = true, true
			}
		}
		if !expected {
			t.Errorf("server rejected: %s", fl)
		}
	}
	for i, r := range rejected {
		if !found[i] {
			t.Errorf("no request was rejected with %q", r)
		}
	}
	all := strings.Join(f.seen, "\n")
	for _, w := range wantSeen {
		if !strings.Contains(all, w) {
			t.Errorf("no verified request matches %q; verified:\n%s", w, all)
		}
	}
	t.Logf("verified:\n%s", all)
}

// TestBotocoreClient drives a TLS server with real botocore clients: S3
// PutObject with the default CRC32 aws-chunked trailer and with SHA256,
// DeleteObjects with a header checksum, a presigned GET, STS (also with a
// session token), IAM, SageMaker and KMS. botocore presigns S3 URLs with
// SigV2 unless configured for s3v4; that URL must be refused.
func TestBotocoreClient(t *testing.T) {
	requireBotocore(t)
	f := newFakeAWS(t)
	cmd := exec.Command("python3", "testdata/botocore_client.py", f.URL, f.caFile, akid, secret, tempAKID, tempSecret, tokenTemp)
	cmd.Env = append(environWithoutAWS(), "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		f.check(t, nil)
		t.Fatalf("botocore_client.py: %v\n%s", err, out)
	}
	f.check(t, []string{"AWSAccessKeyId=" + akid + "&Signature=", "UnsupportedAlgorithm"},
		"s3 PUT /bucket/dir/my file+1=2 ü€ (copy)&x.txt len=1536000 checksum=CRC32:",
		"s3 PUT /bucket/sha256.bin len=5000 checksum=SHA256:",
		"s3 POST /bucket len=", // DeleteObjects, its checksum in a header
		"s3 GET /bucket/dir/my file+1=2 ü€ (copy)&x.txt len=0 checksum=: presigned=true",
		"sts POST / len=43",
		"iam POST /", "sagemaker POST /", "kms POST /")
}

// TestAWSCLI runs the aws CLI, v1 (pip, on PATH) and v2 (/usr/bin/aws),
// against the TLS server. A CLI that is not installed is skipped: botocore
// itself is covered by the tests above.
func TestAWSCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the aws CLI; slow")
	}
	clis := map[string]string{}
	if p, err := exec.LookPath("aws"); err == nil {
		clis["PATH aws"] = p
	}
	if _, err := os.Stat("/usr/bin/aws"); err == nil {
		clis["/usr/bin/aws"] = "/usr/bin/aws"
	}
	if len(clis) == 0 {
		t.Fatal("no aws CLI installed: run scripts/test.sh, which installs it")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "upload.bin")
	if err := os.WriteFile(file, bytes.Repeat([]byte("convoy "), 300000), 0o600); err != nil {
		t.Fatal(err)
	}
	s3v4Config := filepath.Join(dir, "config")
	if err := os.WriteFile(s3v4Config, []byte("[default]\ns3 =\n    signature_version = s3v4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, bin := range clis {
		t.Run(name, func(t *testing.T) {
			f := newFakeAWS(t)
			version, _ := exec.Command(bin, "--version").CombinedOutput()
			t.Logf("%s", bytes.TrimSpace(version))
			run := func(config string, args ...string) string {
				t.Helper()
				cmd := exec.Command(bin, append(args, "--endpoint-url", f.URL)...)
				cmd.Env = append(environWithoutAWS(),
					"AWS_ACCESS_KEY_ID="+akid, "AWS_SECRET_ACCESS_KEY="+secret, "AWS_DEFAULT_REGION=us-east-1",
					"AWS_CA_BUNDLE="+f.caFile, "AWS_CONFIG_FILE="+config, "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
					"AWS_PAGER=", "HOME="+dir)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("aws %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				return string(out)
			}
			get := func(u string) int {
				resp, err := f.Client().Get(u)
				if err != nil {
					t.Error(err)
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			run("/dev/null", "s3api", "put-object", "--bucket", "bucket", "--key", "odd key+=ü.txt", "--body", file)
			run("/dev/null", "s3", "cp", file, "s3://bucket/dir/copy of upload.bin")
			run("/dev/null", "sts", "get-caller-identity")
			run("/dev/null", "iam", "list-users")
			run("/dev/null", "sagemaker", "list-training-jobs")
			run("/dev/null", "kms", "list-keys")

			// aws CLI v1 presigns with SigV2 unless told s3v4: refused.
			var rejected []string
			presigned := strings.TrimSpace(run("/dev/null", "s3", "presign", "s3://bucket/odd key+=ü.txt", "--expires-in", "300"))
			if strings.Contains(presigned, "AWSAccessKeyId=") {
				t.Logf("default presign is SigV2: %s", presigned)
				rejected = append(rejected, "AWSAccessKeyId=")
				if code := get(presigned); code != 400 {
					t.Errorf("SigV2 presigned GET: %d", code)
				}
			}
			presigned = strings.TrimSpace(run(s3v4Config, "s3", "presign", "s3://bucket/odd key+=ü.txt", "--expires-in", "300"))
			if code := get(presigned); code != 200 {
				t.Errorf("presigned GET %s: %d", presigned, code)
			}
			f.check(t, rejected,
				"s3 PUT /bucket/odd key+=ü.txt len=2100000",
				"s3 PUT /bucket/dir/copy of upload.bin len=2100000",
				"s3 GET /bucket/odd key+=ü.txt len=0 checksum=: presigned=true",
				"sts POST /", "iam POST /", "sagemaker POST /", "kms POST /")
		})
	}
}
