package sigv4

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// Test credentials. ASIATEMP is a temporary key that needs tokenTemp;
// ASIAEXPIRED's token has expired.
const (
	akid       = "AKIDEXAMPLE"
	secret     = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	tempAKID   = "ASIATEMP"
	tempSecret = "temporary/secret+key"
	tokenTemp  = "FwoGZXIvYXdzEJr//////////wEaDOTOKEN=="
	docAKID    = "AKIAIOSFODNN7EXAMPLE"
	docSecret  = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

func testLookup(_ context.Context, id, token string) (string, error) {
	switch id {
	case akid:
		return secret, nil
	case docAKID:
		return docSecret, nil
	case tempAKID:
		if token != tokenTemp {
			return "", &Error{Kind: InvalidToken, Msg: "the security token included in the request is invalid"}
		}
		return tempSecret, nil
	case "ASIAEXPIRED":
		return "", &Error{Kind: ExpiredToken, Msg: "the security token included in the request is expired"}
	case "AKIDBROKEN":
		return "", errors.New("database is locked")
	}
	return "", &Error{Kind: UnknownAccessKey, Msg: "unknown"}
}

// signTime is when the tests sign; verifiers run at signTime unless a test
// moves the clock.
var signTime = time.Date(2026, 11, 25, 12, 30, 45, 0, time.UTC)

func newVerifier(now time.Time) *Verifier {
	return &Verifier{Lookup: testLookup, Now: func() time.Time { return now }}
}

var (
	creds     = aws.Credentials{AccessKeyID: akid, SecretAccessKey: secret}
	tempCreds = aws.Credentials{AccessKeyID: tempAKID, SecretAccessKey: tempSecret, SessionToken: tokenTemp}
)

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// sdkSign signs req with aws-sdk-go-v2's signer the way the SDK's own
// clients do: S3 with DisableURIPathEscaping and an x-amz-content-sha256
// header.
func sdkSign(t testing.TB, c aws.Credentials, req *http.Request, body []byte, payloadHash, service string) {
	t.Helper()
	if payloadHash == "" {
		payloadHash = sha256Hex(body)
	}
	if service == "s3" {
		req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	}
	err := v4.NewSigner().SignHTTP(context.Background(), c, req, payloadHash, service, "us-east-1", signTime,
		func(o *v4.SignerOptions) { o.DisableURIPathEscaping = service == "s3" })
	if err != nil {
		t.Fatal(err)
	}
}

// newClientRequest builds a client-side request with a body.
func newClientRequest(t testing.TB, method, url string, body []byte) *http.Request {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// toServer sends req through net/http's wire format and parses it back the
// way the server does: Host moves to r.Host, RequestURI is the raw target.
func toServer(t testing.TB, req *http.Request) *http.Request {
	t.Helper()
	var buf bytes.Buffer
	if err := req.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return parseRaw(t, buf.String())
}

func parseRaw(t testing.TB, raw string) *http.Request {
	t.Helper()
	r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
	if err != nil {
		t.Fatalf("ReadRequest: %v", err)
	}
	return r
}

// kindOf returns the Kind of an *Error, or 0.
func kindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// readBody reads body to the end in small pieces and returns the data and
// the first error other than io.EOF, failing the test if io.EOF came before
// an error (a mismatch must be reported before EOF).
func readBody(t testing.TB, body io.Reader) ([]byte, error) {
	t.Helper()
	var out []byte
	buf := make([]byte, 777)
	for {
		n, err := body.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			// a sticky error: reading again must not turn into EOF
			if _, again := body.Read(buf); again != err {
				t.Errorf("error not sticky: %v then %v", err, again)
			}
			return out, err
		}
	}
}
