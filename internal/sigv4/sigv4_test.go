package sigv4

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// s3Key escapes an S3 key the way the SDKs put it in the path: every byte
// but the unreserved ones and "/".
func s3Key(key string) string { return string(appendURIEncode(nil, key, false)) }

const oddKey = "dir/my file+1=2 ü€ (copy)&x.txt"

// sdkCase is one request signed with aws-sdk-go-v2.
type sdkCase struct {
	name    string
	service string
	method  string
	url     string
	header  map[string]string
	body    string
	// payloadHash overrides the signed payload hash ("" = SHA-256 of body).
	payloadHash string
	creds       aws.Credentials
	presign     time.Duration // > 0: PresignHTTP with this X-Amz-Expires
}

var sdkCases = []sdkCase{
	{name: "sts form POST", service: "sts", method: "POST", url: "https://sts.us-east-1.amazonaws.com/",
		header: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
		body:   "Action=GetCallerIdentity&Version=2011-06-15"},
	{name: "sts with session token", service: "sts", method: "POST", url: "https://sts.amazonaws.com/",
		header: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
		body:   "Action=GetCallerIdentity&Version=2011-06-15", creds: tempCreds},
	{name: "sagemaker json", service: "sagemaker", method: "POST", url: "https://api.sagemaker.us-east-1.amazonaws.com/",
		header: map[string]string{"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.ListTrainingJobs"},
		body:   `{"MaxResults":10,"NameContains":"a  b"}`},
	{name: "kms json", service: "kms", method: "POST", url: "https://kms.us-east-1.amazonaws.com/",
		header: map[string]string{"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"},
		body:   `{}`},
	{name: "iam query GET", service: "iam", method: "GET",
		url: "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08&PathPrefix=%2Fa+b%2F&Marker=x%2By%3Dz~%E2%82%AC"},
	{name: "sagemaker runtime path with reserved characters", service: "sagemaker", method: "POST",
		url:    "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/ep:1%20x/invocations",
		header: map[string]string{"Content-Type": "application/json"}, body: `{"x":1}`},
	{name: "s3 PUT odd key signed payload", service: "s3", method: "PUT",
		url:    "https://s3.us-east-1.amazonaws.com/bucket/" + s3Key(oddKey),
		header: map[string]string{"Content-Type": "text/plain", "X-Amz-Meta-Note": "  two   spaces  ", "X-Amz-Storage-Class": "STANDARD"},
		body:   "hello, world\n"},
	{name: "s3 key with dot segments and double slash", service: "s3", method: "GET",
		url: "https://s3.us-east-1.amazonaws.com/bucket/a//b/./c/../d", payloadHash: unsignedPayload},
	{name: "s3 list with query", service: "s3", method: "GET",
		url: "https://bucket.s3.amazonaws.com/?list-type=2&prefix=a%2Fb%20c&delimiter=%2F&encoding-type=url&x=b&x=a&y=a-b&y=a%2Fb", payloadHash: unsignedPayload},
	{name: "s3 subresource without value", service: "s3", method: "POST",
		url: "https://s3.amazonaws.com/bucket/k?uploads", payloadHash: unsignedPayload},
	{name: "s3 presigned GET odd key", service: "s3", method: "GET",
		url: "https://s3.us-east-1.amazonaws.com/bucket/" + s3Key(oddKey) + "?versionId=v%2B1", presign: 15 * time.Minute},
	{name: "s3 presigned PUT with token and signed content-type", service: "s3", method: "PUT",
		url:    "https://s3.us-east-1.amazonaws.com/bucket/up.bin",
		header: map[string]string{"Content-Type": "application/octet-stream"},
		body:   "uploaded bytes", creds: tempCreds, presign: time.Hour},
	{name: "sts presigned GetCallerIdentity", service: "sts", method: "GET",
		url: "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15", presign: 60 * time.Second},
}

// sign produces the server-side request for c, signed at signTime.
func (c sdkCase) sign(t testing.TB) *http.Request {
	t.Helper()
	if c.creds.AccessKeyID == "" {
		c.creds = creds
	}
	var body []byte
	if c.body != "" {
		body = []byte(c.body)
	}
	req := newClientRequest(t, c.method, c.url, body)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	if c.presign == 0 {
		sdkSign(t, c.creds, req, body, c.payloadHash, c.service)
		return toServer(t, req)
	}
	q := req.URL.Query()
	q.Set("X-Amz-Expires", strconv.FormatInt(int64(c.presign/time.Second), 10))
	req.URL.RawQuery = q.Encode()
	ph := c.payloadHash
	if ph == "" {
		ph = sha256Hex(body)
		if c.service == "s3" {
			ph = unsignedPayload
		}
	}
	signed, hdr, err := v4.NewSigner().PresignHTTP(context.Background(), c.creds, req, ph, c.service, "us-east-1", signTime,
		func(o *v4.SignerOptions) { o.DisableURIPathEscaping = c.service == "s3" })
	if err != nil {
		t.Fatal(err)
	}
	out := newClientRequest(t, c.method, signed, body)
	for k, vs := range hdr {
		if k != "Host" {
			out.Header[k] = vs
		}
	}
	return toServer(t, out)
}

func TestVerifySDKSigned(t *testing.T) {
	for _, c := range sdkCases {
		t.Run(c.name, func(t *testing.T) {
			r := c.sign(t)
			res, err := newVerifier(signTime.Add(time.Minute)).Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v\ncanonical request:\n%s", err, canonicalOf(err))
			}
			wantID := akid
			if c.creds.AccessKeyID != "" {
				wantID = c.creds.AccessKeyID
			}
			if res.AccessKeyID != wantID || res.Service != c.service || res.Region != "us-east-1" ||
				!res.SignedAt.Equal(signTime) || res.Presigned != (c.presign > 0) || res.SessionToken != c.creds.SessionToken {
				t.Errorf("result %+v", res)
			}
			got, err := readBody(t, r.Body)
			if err != nil || string(got) != c.body {
				t.Errorf("body = %q, %v; want %q", got, err, c.body)
			}
		})
	}
}

func canonicalOf(err error) string {
	if e, ok := err.(*Error); ok {
		return e.CanonicalRequest()
	}
	return ""
}

func findCase(t testing.TB, name string) sdkCase {
	for _, c := range sdkCases {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no case %q", name)
	return sdkCase{}
}

func TestVerifyTampered(t *testing.T) {
	sts := findCase(t, "sts form POST")
	sm := findCase(t, "sagemaker json")
	iam := findCase(t, "iam query GET")
	put := findCase(t, "s3 PUT odd key signed payload")
	pre := findCase(t, "s3 presigned GET odd key")

	setAuth := func(r *http.Request, old, new string) {
		r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), old, new, 1))
	}
	tests := []struct {
		name   string
		c      sdkCase
		mutate func(r *http.Request)
		now    time.Time // zero: signTime
		want   Kind
	}{
		{"changed header value", sm, func(r *http.Request) { r.Header.Set("X-Amz-Target", "SageMaker.DeleteModel") }, time.Time{}, BadSignature},
		{"changed host", sts, func(r *http.Request) { r.Host = "sts.eu-west-1.amazonaws.com" }, time.Time{}, BadSignature},
		{"changed method", sts, func(r *http.Request) { r.Method = "PUT" }, time.Time{}, BadSignature},
		{"changed query char", iam, func(r *http.Request) { r.RequestURI = strings.Replace(r.RequestURI, "ListUsers", "ListUserz", 1) }, time.Time{}, BadSignature},
		{"added query param", iam, func(r *http.Request) { r.RequestURI += "&MaxItems=1" }, time.Time{}, BadSignature},
		{"changed path", put, func(r *http.Request) { r.RequestURI = strings.Replace(r.RequestURI, "copy", "copz", 1) }, time.Time{}, BadSignature},
		{"changed body byte (hashed by verifier)", sts, func(r *http.Request) {
			r.Body = io.NopCloser(strings.NewReader(strings.Replace(sts.body, "Identity", "Identitz", 1)))
		}, time.Time{}, BadSignature},
		{"wrong secret", sts, func(r *http.Request) {
			other := aws.Credentials{AccessKeyID: akid, SecretAccessKey: "not the secret"}
			req := newClientRequest(t, "POST", sts.url, []byte(sts.body))
			req.Header.Set("Content-Type", sts.header["Content-Type"])
			sdkSign(t, other, req, []byte(sts.body), "", "sts")
			r.Header.Set("Authorization", req.Header.Get("Authorization"))
		}, time.Time{}, BadSignature},
		{"unknown key", sts, func(r *http.Request) { setAuth(r, "Credential="+akid, "Credential=AKIDNOBODY") }, time.Time{}, UnknownAccessKey},
		{"lookup failure", sts, func(r *http.Request) { setAuth(r, "Credential="+akid, "Credential=AKIDBROKEN") }, time.Time{}, Internal},
		{"missing session token", findCase(t, "sts with session token"), func(r *http.Request) { r.Header.Del("X-Amz-Security-Token") }, time.Time{}, InvalidToken},
		{"expired session token", sts, func(r *http.Request) { setAuth(r, "Credential="+akid, "Credential=ASIAEXPIRED") }, time.Time{}, ExpiredToken},
		{"clock 20 min behind the request", sts, nil, signTime.Add(-20 * time.Minute), Skewed},
		{"clock 20 min ahead of the request", sts, nil, signTime.Add(20 * time.Minute), Skewed},
		{"missing host in SignedHeaders", sts, func(r *http.Request) {
			setAuth(r, "SignedHeaders=content-length;content-type;host;", "SignedHeaders=content-length;content-type;")
		}, time.Time{}, Malformed},
		{"x-amz-date not signed", sts, func(r *http.Request) { setAuth(r, ";x-amz-date,", ",") }, time.Time{}, Malformed},
		{"wrong scope date", sts, func(r *http.Request) { setAuth(r, "/20261125/", "/20261124/") }, time.Time{}, Malformed},
		{"wrong terminator", sts, func(r *http.Request) { setAuth(r, "/aws4_request", "/aws5_request") }, time.Time{}, Malformed},
		{"signature not hex", sts, func(r *http.Request) {
			a := r.Header.Get("Authorization")
			r.Header.Set("Authorization", a[:len(a)-1]+"g")
		}, time.Time{}, Malformed},
		{"signature one digit changed", sts, func(r *http.Request) {
			a := r.Header.Get("Authorization")
			last := byte('0')
			if a[len(a)-1] == '0' {
				last = '1'
			}
			r.Header.Set("Authorization", a[:len(a)-1]+string(last))
		}, time.Time{}, BadSignature},
		{"no authentication", sts, func(r *http.Request) { r.Header.Del("Authorization") }, time.Time{}, MissingAuth},
		{"signature version 2", sts, func(r *http.Request) { r.Header.Set("Authorization", "AWS "+akid+":c2lnbmF0dXJl") }, time.Time{}, UnsupportedAlgorithm},
		{"signature version 2 presigned", sts, func(r *http.Request) {
			r.Header.Del("Authorization")
			r.RequestURI = "/?AWSAccessKeyId=" + akid + "&Signature=c2ln&Expires=1795636284"
		}, time.Time{}, UnsupportedAlgorithm},
		{"sigv4a", sts, func(r *http.Request) { setAuth(r, "AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256") }, time.Time{}, UnsupportedAlgorithm},
		{"header and query auth", sts, func(r *http.Request) { r.RequestURI = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256" }, time.Time{}, Malformed},
		{"s3 body tampered: payload hash wrong", put, func(r *http.Request) { r.Header.Set("X-Amz-Content-Sha256", sha256Hex([]byte("other"))) }, time.Time{}, BadSignature},
		{"s3 missing x-amz-content-sha256", put, func(r *http.Request) { r.Header.Del("X-Amz-Content-Sha256") }, time.Time{}, Malformed},
		{"s3 unsigned x-amz header", put, func(r *http.Request) { r.Header.Set("X-Amz-Acl", "public-read") }, time.Time{}, BadSignature},
		{"presign expired", pre, nil, signTime.Add(15*time.Minute + time.Second), PresignExpired},
		{"presign from the future", pre, nil, signTime.Add(-20 * time.Minute), Skewed},
		{"presign query changed", pre, func(r *http.Request) {
			r.RequestURI = strings.Replace(r.RequestURI, "versionId=v%2B1", "versionId=v%2B2", 1)
		}, time.Time{}, BadSignature},
		{"presign expiry extended", pre, func(r *http.Request) {
			r.RequestURI = strings.Replace(r.RequestURI, "X-Amz-Expires=900", "X-Amz-Expires=9000", 1)
		}, time.Time{}, BadSignature},
		{"presign expiry zero", pre, func(r *http.Request) {
			r.RequestURI = strings.Replace(r.RequestURI, "X-Amz-Expires=900", "X-Amz-Expires=0", 1)
		}, time.Time{}, Malformed},
		{"presign expiry over a week", pre, func(r *http.Request) {
			r.RequestURI = strings.Replace(r.RequestURI, "X-Amz-Expires=900", "X-Amz-Expires=604801", 1)
		}, time.Time{}, Malformed},
		{"presign unsigned x-amz header added", pre, func(r *http.Request) { r.Header.Set("X-Amz-Copy-Source", "/other/secret") }, time.Time{}, BadSignature},
		{"presign signature repeated", pre, func(r *http.Request) { r.RequestURI += "&X-Amz-Signature=00" }, time.Time{}, Malformed},
		{"presign unknown algorithm", pre, func(r *http.Request) {
			r.RequestURI = strings.Replace(r.RequestURI, "X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256", 1)
		}, time.Time{}, UnsupportedAlgorithm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.c.sign(t)
			if tt.mutate != nil {
				tt.mutate(r)
			}
			now := tt.now
			if now.IsZero() {
				now = signTime
			}
			res, err := newVerifier(now).Verify(r)
			if got := kindOf(err); got != tt.want {
				t.Fatalf("Verify = %+v, %v; want Kind %v", res, err, tt.want)
			}
		})
	}
}

// TestS3BodyTampered: an S3 body that does not match its signed hash is
// caught by Result.Body before EOF.
func TestS3BodyTampered(t *testing.T) {
	put := findCase(t, "s3 PUT odd key signed payload")
	r := put.sign(t)
	r.Body = io.NopCloser(strings.NewReader(strings.Replace(put.body, "world", "World", 1)))
	res, err := newVerifier(signTime).Verify(r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readBody(t, res.Body); kindOf(err) != PayloadHashMismatch {
		t.Fatalf("body read error = %v, want PayloadHashMismatch", err)
	}
}

// TestAWSDocumentedVectors verifies the signed examples of the S3 API
// reference ("Signature Calculations for the Authorization Header" and
// "Authenticating Requests: Using Query Parameters").
func TestAWSDocumentedVectors(t *testing.T) {
	const auth = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
	tests := []struct{ name, raw string }{
		{"GET Object", "GET /test.txt HTTP/1.1\r\nHost: examplebucket.s3.amazonaws.com\r\n" +
			"Authorization: " + auth + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41\r\n" +
			"Range: bytes=0-9\r\nx-amz-content-sha256: " + emptySHA256 + "\r\nx-amz-date: 20130524T000000Z\r\n\r\n"},
		{"PUT Object", "PUT /test%24file.text HTTP/1.1\r\nHost: examplebucket.s3.amazonaws.com\r\nDate: Fri, 24 May 2013 00:00:00 GMT\r\n" +
			"Authorization: " + auth + "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd\r\n" +
			"x-amz-date: 20130524T000000Z\r\nx-amz-storage-class: REDUCED_REDUNDANCY\r\n" +
			"x-amz-content-sha256: 44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\r\nContent-Length: 21\r\n\r\nWelcome to Amazon S3."},
		{"GET Bucket Lifecycle", "GET /?lifecycle HTTP/1.1\r\nHost: examplebucket.s3.amazonaws.com\r\n" +
			"Authorization: " + auth + " SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543\r\n" +
			"x-amz-date: 20130524T000000Z\r\nx-amz-content-sha256: " + emptySHA256 + "\r\n\r\n"},
		{"GET Bucket (List Objects)", "GET /?max-keys=2&prefix=J HTTP/1.1\r\nHost: examplebucket.s3.amazonaws.com\r\n" +
			"Authorization: " + auth + "SignedHeaders=host;x-amz-content-sha256;x-amz-date,Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7\r\n" +
			"x-amz-date: 20130524T000000Z\r\nx-amz-content-sha256: " + emptySHA256 + "\r\n\r\n"},
		{"presigned GET Object", "GET /test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request" +
			"&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404 HTTP/1.1\r\n" +
			"Host: examplebucket.s3.amazonaws.com\r\n\r\n"},
	}
	docTime := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := parseRaw(t, tt.raw)
			res, err := newVerifier(docTime.Add(time.Minute)).Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v\n%s", err, canonicalOf(err))
			}
			if _, err := readBody(t, res.Body); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestHTTP2 sends SDK-signed requests to a real HTTP/2 server: there Host
// arrives as :authority and the body length without a header.
func TestHTTP2(t *testing.T) {
	type outcome struct {
		proto string
		err   error
		body  string
	}
	got := make(chan outcome, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := newVerifier(signTime).Verify(r)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(r.Body)
		}
		got <- outcome{r.Proto, err, string(body)}
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	client := srv.Client()
	client.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"h2"}

	for _, c := range []sdkCase{findCase(t, "sts form POST"), findCase(t, "s3 PUT odd key signed payload"), findCase(t, "sagemaker runtime path with reserved characters")} {
		t.Run(c.name, func(t *testing.T) {
			u, _ := url.Parse(c.url)
			req := newClientRequest(t, c.method, srv.URL+u.RequestURI(), []byte(c.body))
			for k, v := range c.header {
				req.Header.Set(k, v)
			}
			sdkSign(t, creds, req, []byte(c.body), c.payloadHash, c.service)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			o := <-got
			if o.proto != "HTTP/2.0" || o.err != nil || o.body != c.body {
				t.Fatalf("server saw %s, err %v, body %q", o.proto, o.err, o.body)
			}
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	c := findCase(t, "sagemaker json")
	c.body = `{"x":"` + strings.Repeat("a", 2000) + `"}`
	v := newVerifier(signTime)
	v.MaxBufferedBody = 1000
	r := c.sign(t)
	if _, err := v.Verify(r); kindOf(err) != BodyTooLarge {
		t.Fatalf("Verify = %v, want BodyTooLarge", err)
	}
	// without Content-Length the limit holds while reading
	r = c.sign(t)
	r.ContentLength = -1
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader([]byte(c.body))))
	if _, err := v.Verify(r); kindOf(err) != BodyTooLarge {
		t.Fatalf("Verify = %v, want BodyTooLarge", err)
	}
}

func TestHeaderChecksum(t *testing.T) {
	body := []byte("checksummed body")
	for _, tc := range []struct {
		name, header, value string
		want                Kind
	}{
		{"crc32 ok", "X-Amz-Checksum-Crc32", b64(crc32IEEE(body)), 0},
		{"sha256 ok", "X-Amz-Checksum-Sha256", b64(sha256Sum(body)), 0},
		{"crc32 wrong", "X-Amz-Checksum-Crc32", b64(crc32IEEE([]byte("other"))), ChecksumMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := newClientRequest(t, "PUT", "https://s3.amazonaws.com/b/k", body)
			req.Header.Set(tc.header, tc.value)
			sdkSign(t, creds, req, body, unsignedPayload, "s3")
			res, err := newVerifier(signTime).Verify(toServer(t, req))
			if err != nil {
				t.Fatal(err)
			}
			_, err = readBody(t, res.Body)
			if kindOf(err) != tc.want {
				t.Fatalf("read: %v, want %v", err, tc.want)
			}
			if algo, v := res.ChecksumValue(); tc.want == 0 && (v != tc.value || algo == "") {
				t.Errorf("ChecksumValue = %q %q", algo, v)
			}
		})
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		kind      Kind
		presigned bool
		service   string
		code      string
		status    int
	}{
		{BadSignature, false, "s3", "SignatureDoesNotMatch", 403},
		{UnknownAccessKey, false, "s3", "InvalidAccessKeyId", 403},
		{Skewed, false, "s3", "RequestTimeTooSkewed", 403},
		{PresignExpired, true, "s3", "AccessDenied", 403},
		{Malformed, false, "s3", "AuthorizationHeaderMalformed", 400},
		{Malformed, true, "s3", "AuthorizationQueryParametersError", 400},
		{PayloadHashMismatch, false, "s3", "XAmzContentSHA256Mismatch", 400},
		{ChecksumMismatch, false, "s3", "BadDigest", 400},
		{BadChunk, false, "s3", "InvalidRequest", 400},
		{MissingAuth, false, "s3", "AccessDenied", 403},
		{ExpiredToken, false, "s3", "ExpiredToken", 400},
		{Internal, false, "s3", "InternalError", 500},
		{BadSignature, false, "sts", "SignatureDoesNotMatch", 403},
		{UnknownAccessKey, false, "iam", "InvalidClientTokenId", 403},
		{InvalidToken, false, "sts", "InvalidClientTokenId", 403},
		{Skewed, false, "sts", "RequestTimeTooSkewed", 403},
		{ExpiredToken, false, "sts", "ExpiredToken", 403},
		{MissingAuth, false, "iam", "MissingAuthenticationToken", 403},
		{Malformed, false, "iam", "IncompleteSignature", 400},
		{BadSignature, false, "kms", "InvalidSignatureException", 400},
		{UnknownAccessKey, false, "sagemaker", "UnrecognizedClientException", 400},
		{ExpiredToken, false, "sagemaker", "ExpiredTokenException", 400},
		{Skewed, false, "kms", "InvalidSignatureException", 400},
		{MissingAuth, false, "kms", "MissingAuthenticationTokenException", 400},
		{BodyTooLarge, false, "sagemaker", "RequestEntityTooLarge", 413},
		{Kind(99), false, "kms", "InternalFailure", 500},
	}
	for _, tt := range tests {
		e := &Error{Kind: tt.kind, presigned: tt.presigned}
		if c, s := e.Code(tt.service), e.Status(tt.service); c != tt.code || s != tt.status {
			t.Errorf("%v (presigned %v) for %s = %s %d, want %s %d", tt.kind, tt.presigned, tt.service, c, s, tt.code, tt.status)
		}
	}
	// every kind has a code in every protocol
	for k := MissingAuth; k <= Internal; k++ {
		for _, svc := range []string{"s3", "sts", "kms"} {
			if e := (&Error{Kind: k}); e.Code(svc) == "" || e.Status(svc) == 0 {
				t.Errorf("%v has no code for %s", k, svc)
			}
		}
	}
}

// TestPresignedErrorIsQueryError: Verify marks errors of presigned requests
// so S3 answers AuthorizationQueryParametersError, not ...HeaderMalformed.
func TestPresignedErrorIsQueryError(t *testing.T) {
	r := findCase(t, "s3 presigned GET odd key").sign(t)
	r.RequestURI = strings.Replace(r.RequestURI, "X-Amz-Expires=900", "X-Amz-Expires=abc", 1)
	_, err := newVerifier(signTime).Verify(r)
	if e, ok := err.(*Error); !ok || e.Code("s3") != "AuthorizationQueryParametersError" {
		t.Fatalf("err = %v", err)
	}
}
