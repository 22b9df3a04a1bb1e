package sigv4

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"testing"
)

func TestCanonicalQuery(t *testing.T) {
	tests := []struct {
		raw       string
		presigned bool
		want      string
	}{
		{"", false, ""},
		{"b=2&a=1", false, "a=1&b=2"},
		{"c=1&c=0", false, "c=0&c=1"},
		// sorted after encoding: "%2F" sorts before "-", "/" after it
		{"a=b%2Fc&a=b-c", false, "a=b%2Fc&a=b-c"},
		{"uploads", false, "uploads="},
		{"a=x+y&b=x%2By&c=x%20y", false, "a=x%20y&b=x%2By&c=x%20y"},
		{"%41=%7e&sp%61ce=*", false, "A=~&space=%2A"},
		{"k=%C3%BC%E2%82%AC", false, "k=%C3%BC%E2%82%AC"},
		{"a=1&&b=2&", false, "a=1&b=2"},
		{"X-Amz-Signature=abc&a=1", false, "X-Amz-Signature=abc&a=1"},
		{"X-Amz-Signature=abc&a=1", true, "a=1"},
		{"X-Amz-Credential=AKID%2F20261125%2Fus-east-1%2Fs3%2Faws4_request", true, "X-Amz-Credential=AKID%2F20261125%2Fus-east-1%2Fs3%2Faws4_request"},
	}
	for _, tt := range tests {
		ps, err := parseQuery(tt.raw)
		if err != nil {
			t.Errorf("parseQuery(%q): %v", tt.raw, err)
			continue
		}
		if got := string(appendCanonicalQuery(nil, ps, tt.presigned)); got != tt.want {
			t.Errorf("canonical query of %q (presigned %v) = %q, want %q", tt.raw, tt.presigned, got, tt.want)
		}
	}
	if _, err := parseQuery("a=%zz"); err == nil || err.Kind != Malformed {
		t.Errorf("invalid escape: %v", err)
	}
}

func TestCanonicalURIs(t *testing.T) {
	tests := []struct {
		service, path string
		want          []string
	}{
		{"s3", "/bucket/a%20b//c/./d/../e%2Bf", []string{"/bucket/a%20b//c/./d/../e%2Bf"}},
		{"s3", "/", []string{"/"}},
		{"sts", "/", []string{"/"}},
		{"sagemaker", "/endpoints/ep:1%20x/invocations", []string{"/endpoints/ep%3A1%2520x/invocations"}},
		{"sagemaker", "/endpoints/./ep//invocations", []string{"/endpoints/./ep//invocations", "/endpoints/ep/invocations"}},
		{"kms", "/a/b/../c/", []string{"/a/b/../c/", "/a/c/"}},
		{"kms", "/~user/-_.", []string{"/~user/-_."}},
	}
	for _, tt := range tests {
		if got := canonicalURIs(tt.service, tt.path); !slices.Equal(got, tt.want) {
			t.Errorf("canonicalURIs(%s, %q) = %q, want %q", tt.service, tt.path, got, tt.want)
		}
	}
}

func TestRequestTarget(t *testing.T) {
	tests := []struct{ requestURI, path, query string }{
		{"/b/k%20x?a=1&b", "/b/k%20x", "a=1&b"},
		{"/", "/", ""},
		{"http://s3.local:4443/b/k?x=y", "/b/k", "x=y"},
		{"https://s3.local?x=y", "/", "x=y"},
		{"", "/from/url%2Fpath", "q=1"}, // a request built in-process
	}
	for _, tt := range tests {
		u, _ := url.Parse("https://h/from/url%2Fpath?q=1")
		r := &http.Request{RequestURI: tt.requestURI, URL: u}
		if p, q := requestTarget(r); p != tt.path || q != tt.query {
			t.Errorf("requestTarget(%q) = %q, %q; want %q, %q", tt.requestURI, p, q, tt.path, tt.query)
		}
	}
}

func TestCanonicalHeaders(t *testing.T) {
	r := &http.Request{
		Host:          "example.com:4443",
		ContentLength: 42,
		Header: http.Header{
			"X-Amz-Meta-A": {"  one   two  ", "three"},
			"X-Amz-Date":   {"20261125T123045Z"},
		},
		TransferEncoding: []string{"chunked"},
	}
	got := string(appendCanonicalHeaders(nil, r, []string{":authority", "content-length", "host", "transfer-encoding", "x-amz-date", "x-amz-meta-a", "x-missing"}))
	want := ":authority:example.com:4443\ncontent-length:42\nhost:example.com:4443\ntransfer-encoding:chunked\n" +
		"x-amz-date:20261125T123045Z\nx-amz-meta-a:one two,three\nx-missing:\n"
	if got != want {
		t.Errorf("canonical headers:\n%s\nwant:\n%s", got, want)
	}
}

func TestParseAuthorization(t *testing.T) {
	const sig = "ddc4eac2f602844b143ec1c389259bd14644ced8308398efda5391217931d79d"
	const cred = "Credential=AKID/20261125/us-east-1/sts/aws4_request"
	tests := []struct {
		header string
		want   Kind // 0: parses
	}{
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host;x-amz-date, Signature=" + sig, 0},
		{"AWS4-HMAC-SHA256 " + cred + ",SignedHeaders=host;x-amz-date,Signature=" + sig, 0},
		{"AWS4-HMAC-SHA256   Signature=" + sig + " ,  SignedHeaders=host , " + cred, 0},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host, Signature=" + sig[:63] + "F", 0},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host", Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", " + cred + ", SignedHeaders=host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host, Signature=" + sig + ", Extra=1", Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=x-amz-date, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=Host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host;host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host;;x, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 " + cred + ", SignedHeaders=host, Signature=" + sig[:62], Malformed},
		{"AWS4-HMAC-SHA256 Credential=AKID/2026112/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 Credential=AKID/20261125//sts/aws4_request, SignedHeaders=host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 Credential=/20261125/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256 Credential=AKID/20261125/us-east-1/sts/aws4_request/x, SignedHeaders=host, Signature=" + sig, Malformed},
		{"AWS4-HMAC-SHA256" + cred, UnsupportedAlgorithm},
		{"AWS4-HMAC-SHA512 " + cred, UnsupportedAlgorithm},
		{"AWS AKID:c2ln", UnsupportedAlgorithm},
		{"Bearer token", UnsupportedAlgorithm},
	}
	for _, tt := range tests {
		c, err := parseAuthorization(tt.header)
		var got Kind
		if err != nil {
			got = err.Kind
		}
		if got != tt.want {
			t.Errorf("parseAuthorization(%q) = %v, want %v", tt.header, err, tt.want)
			continue
		}
		if err == nil && (c.accessKeyID != "AKID" || c.scope != "20261125/us-east-1/sts/aws4_request" || c.service != "sts") {
			t.Errorf("parseAuthorization(%q) = %+v", tt.header, c)
		}
	}
}

func TestKeyCache(t *testing.T) {
	var c keyCache
	want := refSigningKey("s", "20261125", "us-east-1", "s3")
	for range 2 {
		if got := c.signingKey("s", "20261125", "us-east-1", "s3"); string(got) != string(want) {
			t.Fatal("wrong signing key")
		}
	}
	if string(c.signingKey("t", "20261125", "us-east-1", "s3")) == string(want) {
		t.Fatal("a different secret gave the same key")
	}
	for i := range keyCacheSize * 2 {
		c.signingKey("s", "20261125", "r"+strconv.Itoa(i), "s3")
	}
	if c.l.Len() != keyCacheSize || len(c.m) != keyCacheSize {
		t.Fatalf("cache holds %d/%d entries, bound is %d", c.l.Len(), len(c.m), keyCacheSize)
	}
}
