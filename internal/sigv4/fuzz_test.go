package sigv4

import (
	"bytes"
	"encoding/hex"
	"io"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func FuzzParseAuthorization(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=ddc4eac2f602844b143ec1c389259bd14644ced8308398efda5391217931d79d")
	f.Add("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
	f.Add("AWS4-HMAC-SHA256  Signature=00,Credential=a/b/c/d/e")
	f.Add("AWS AKID:sig")
	f.Add("AWS4-HMAC-SHA256 Credential=//////, SignedHeaders=;;, Signature=")
	f.Fuzz(func(t *testing.T, h string) {
		c, err := parseAuthorization(h)
		if err != nil {
			if err.Kind != Malformed && err.Kind != UnsupportedAlgorithm {
				t.Fatalf("unexpected kind %v", err.Kind)
			}
			return
		}
		if c.scope != c.date+"/"+c.region+"/"+c.service+"/aws4_request" || !c.signs("host") && !c.signs(":authority") {
			t.Fatalf("inconsistent %+v", c)
		}
		// What parsed re-renders, SDK style, to the same credential.
		again, err := parseAuthorization("AWS4-HMAC-SHA256 Credential=" + c.accessKeyID + "/" + c.scope +
			", SignedHeaders=" + c.signedHeadersRaw + ", Signature=" + hex.EncodeToString(c.signature[:]))
		if err != nil || !slices.Equal(again.signedHeaders, c.signedHeaders) || again.signature != c.signature || again.accessKeyID != c.accessKeyID {
			t.Fatalf("re-render: %+v, %v", again, err)
		}
	})
}

// FuzzCanonicalQuery checks the query parser against net/url (which the
// SDKs' signers use) and the canonical form's invariants, and that parsing
// presign parameters never panics.
func FuzzCanonicalQuery(f *testing.F) {
	f.Add("Action=ListUsers&Version=2010-05-08&PathPrefix=%2Fa+b%2F&Marker=x%2By%3Dz~%E2%82%AC")
	f.Add("uploads&a=&=b&&c=1&c=0")
	f.Add("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20261125%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261125T123045Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=00")
	f.Add("a=%zz;b")
	f.Fuzz(func(t *testing.T, raw string) {
		ps, err := parseQuery(raw)
		want, uerr := url.ParseQuery(raw)
		if uerr == nil && err != nil {
			t.Fatalf("net/url parses %q, we do not: %v", raw, err)
		}
		if err != nil {
			return
		}
		if uerr == nil {
			got := url.Values{}
			for _, p := range ps {
				got[p.key] = append(got[p.key], p.value)
			}
			if len(got) != len(want) {
				t.Fatalf("parsed %v, net/url %v", got, want)
			}
			for k, v := range want {
				if !slices.Equal(got[k], v) {
					t.Fatalf("parsed %v, net/url %v", got, want)
				}
			}
		}
		canon := string(appendCanonicalQuery(nil, ps, true))
		for i := 0; i < len(canon); i++ {
			c := canon[i]
			switch {
			case isUnreserved(c), c == '=', c == '&':
			case c == '%' && i+2 < len(canon) && strings.IndexByte(upperHex, canon[i+1]) >= 0 && strings.IndexByte(upperHex, canon[i+2]) >= 0:
			default:
				t.Fatalf("canonical query %q has %q at %d", canon, c, i)
			}
		}
		// canonical is a fixed point
		ps2, err := parseQuery(canon)
		if err != nil || string(appendCanonicalQuery(nil, ps2, true)) != canon {
			t.Fatalf("not a fixed point: %q", canon)
		}
		parsePresign(ps)
	})
}

// FuzzVerifyRequest feeds arbitrary targets and headers to Verify.
func FuzzVerifyRequest(f *testing.F) {
	pre := findCase(f, "s3 presigned GET odd key").sign(f)
	sts := findCase(f, "sts form POST").sign(f)
	f.Add(pre.RequestURI, "", "", "")
	f.Add(sts.RequestURI, sts.Header.Get("Authorization"), sts.Header.Get("X-Amz-Date"), "")
	f.Add("http://h/x/../y?X-Amz-Algorithm=AWS4-HMAC-SHA256", "", "", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
	v := newVerifier(signTime)
	f.Fuzz(func(t *testing.T, target, auth, date, payload string) {
		r := &http.Request{Method: "GET", RequestURI: target, Host: "h", URL: &url.URL{Path: "/"}, Header: http.Header{}, Body: http.NoBody}
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		r.Header.Set("X-Amz-Date", date)
		r.Header.Set("X-Amz-Content-Sha256", payload)
		if u, err := url.ParseRequestURI(target); err == nil {
			r.URL = u
		}
		if res, err := v.Verify(r); err == nil {
			t.Fatalf("verified a fuzzed request: %+v", res)
		}
	})
}

// FuzzChunkedReader decodes arbitrary bytes as each aws-chunked variant. It
// must not panic, must not yield more bytes than it was given, and must not
// allocate in proportion to the sizes the input claims.
func FuzzChunkedReader(f *testing.F) {
	seed := bytes.Repeat([]byte{0xab}, 32)
	data := bytes.Repeat([]byte("fuzz"), 75) // small, so that minimising stays quick
	for _, b := range []chunkedBody{
		{data: data, chunkSize: 128, signed: true},
		{data: data, chunkSize: 128, signed: true, trailer: "x-amz-checksum-crc32"},
		{data: data, chunkSize: 128, trailer: "x-amz-checksum-crc32c"},
	} {
		f.Add(b.encode(f, creds, seed, signTime), uint8(0))
	}
	f.Add([]byte("ffffffffffffffff;chunk-signature="+strings.Repeat("0", 64)+"\r\n"), uint8(0))
	f.Add([]byte("7fffffffffffffff\r\nabc"), uint8(2))
	key := refSigningKey(secret, "20261125", "us-east-1", "s3")
	kinds := []payloadKind{payloadStreamingSigned, payloadStreamingSignedTrailer, payloadStreamingUnsignedTrailer}
	f.Fuzz(func(t *testing.T, body []byte, variant uint8) {
		pk := kinds[int(variant)%len(kinds)]
		h := http.Header{}
		switch pk {
		case payloadStreamingSignedTrailer:
			h.Set("X-Amz-Trailer", "x-amz-checksum-crc32")
		case payloadStreamingUnsignedTrailer:
			h.Set("X-Amz-Trailer", "x-amz-checksum-crc32c")
		}
		if variant&4 != 0 {
			h.Set("X-Amz-Decoded-Content-Length", "300")
		}
		r := &http.Request{Header: h}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		cr, cerr := newChunkedReader(r, io.NopCloser(bytes.NewReader(body)), &Result{}, pk, nil, key,
			signTime.Format(amzDateForm), "20261125/us-east-1/s3/aws4_request", seed)
		if cerr != nil {
			t.Fatal(cerr)
		}
		n, err := io.Copy(io.Discard, cr)
		runtime.ReadMemStats(&after)
		if n > int64(len(body)) {
			t.Fatalf("decoded %d bytes from %d", n, len(body))
		}
		if err != nil && kindOf(err) == 0 {
			t.Fatalf("error is not an *Error: %v", err)
		}
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 4<<20 {
			t.Fatalf("allocated %d bytes decoding %d", grown, len(body))
		}
	})
}
