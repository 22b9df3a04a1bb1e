package sigv4

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"hash/crc64"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func crc32IEEE(b []byte) []byte { return binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(b)) }

// trailerChecksum computes a checksum with the standard library directly,
// independently of checksumAlgos (CRC64NVME aside, which has no other
// implementation here; TestChecksumAlgorithms pins it to its check value).
func trailerChecksum(t testing.TB, name string, data []byte) string {
	switch name {
	case "x-amz-checksum-crc32":
		return b64(crc32IEEE(data))
	case "x-amz-checksum-crc32c":
		return b64(binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, crc32.MakeTable(crc32.Castagnoli))))
	case "x-amz-checksum-sha256":
		return b64(sha256Sum(data))
	case "x-amz-checksum-sha1":
		s := sha1.Sum(data)
		return b64(s[:])
	case "x-amz-checksum-crc64nvme":
		return b64(binary.BigEndian.AppendUint64(nil, crc64.Checksum(data, crc64.MakeTable(0x9a6c9329ac4bc9b5))))
	}
	t.Fatalf("no checksum %s", name)
	return ""
}

// TestChecksumAlgorithms pins each algorithm to its published check value
// (the checksum of "123456789").
func TestChecksumAlgorithms(t *testing.T) {
	want := map[string]string{
		"CRC32":     "cbf43926",
		"CRC32C":    "e3069283",
		"CRC64NVME": "ae8b14860a799888",
		"SHA1":      "f7c3bc1d808e04732adf679965ccc34ca7ae3441",
		"SHA256":    "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
	}
	for _, a := range checksumAlgos {
		h := a.new()
		h.Write([]byte("123456789"))
		if got := hex.EncodeToString(h.Sum(nil)); got != want[a.name] || len(got) != 2*a.size {
			t.Errorf("%s = %s, want %s", a.name, got, want[a.name])
		}
	}
}

// chunkedBody is an aws-chunked body to encode.
type chunkedBody struct {
	data      []byte
	chunkSize int
	signed    bool
	trailer   string // checksum trailer name, "" for none
	// trailerValue replaces the correct checksum value when set.
	trailerValue string
	// docFraming writes the S3 documentation's form: CRLF between the final
	// chunk and the trailer, none after the trailer signature.
	docFraming bool
}

// encode writes b as aws-chunked. Chunk signatures come from aws-sdk-go-v2's
// StreamSigner; the trailer signature, which the SDK does not produce, is
// computed here from the documented string to sign (and checked against the
// AWS example in TestChunkedAWSTrailerVector).
func (b chunkedBody) encode(t testing.TB, c aws.Credentials, seed []byte, when time.Time) []byte {
	t.Helper()
	var out bytes.Buffer
	ss := v4.NewStreamSigner(c, "s3", "us-east-1", seed)
	prev := seed
	writeChunk := func(p []byte) {
		fmt.Fprintf(&out, "%x", len(p))
		if b.signed {
			sig, err := ss.GetSignature(context.Background(), nil, p, when)
			if err != nil {
				t.Fatal(err)
			}
			prev = sig
			fmt.Fprintf(&out, ";chunk-signature=%x", sig)
		}
		out.WriteString("\r\n")
		if len(p) > 0 || !b.trailer2() {
			out.Write(p)
			out.WriteString("\r\n")
		}
	}
	for rest := b.data; len(rest) > 0; {
		n := min(b.chunkSize, len(rest))
		writeChunk(rest[:n])
		rest = rest[n:]
	}
	writeChunk(nil)
	if !b.trailer2() {
		return out.Bytes()
	}
	if b.docFraming {
		out.WriteString("\r\n")
	}
	var lines string
	if b.trailer != "" {
		v := b.trailerValue
		if v == "" {
			v = trailerChecksum(t, b.trailer, b.data)
		}
		lines = b.trailer + ":" + v + "\n"
		out.WriteString(b.trailer + ":" + v + "\r\n")
	}
	if b.signed {
		key := refSigningKey(c.SecretAccessKey, when.Format("20060102"), "us-east-1", "s3")
		sts := "AWS4-HMAC-SHA256-TRAILER\n" + when.Format(amzDateForm) + "\n" + when.Format("20060102") + "/us-east-1/s3/aws4_request\n" +
			hex.EncodeToString(prev) + "\n" + sha256Hex([]byte(lines))
		m := hmac.New(sha256.New, key)
		m.Write([]byte(sts))
		fmt.Fprintf(&out, "x-amz-trailer-signature:%x\r\n", m.Sum(nil))
	}
	if !b.docFraming {
		out.WriteString("\r\n")
	}
	return out.Bytes()
}

// trailer2 reports whether the body is a -TRAILER variant.
func (b chunkedBody) trailer2() bool { return b.trailer != "" || !b.signed }

func (b chunkedBody) payloadHash() string {
	switch {
	case !b.signed:
		return streamingUnsignedPayloadTrailer
	case b.trailer != "":
		return streamingSignedPayloadTrailer
	}
	return streamingSignedPayload
}

// refSigningKey derives a signing key independently of the package.
func refSigningKey(secret, date, region, service string) []byte {
	k := []byte("AWS4" + secret)
	for _, s := range []string{date, region, service, "aws4_request"} {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(s))
		k = m.Sum(nil)
	}
	return k
}

// request signs a PUT of b with aws-sdk-go-v2 (the seed signature) and
// returns the server-side request and its encoded body. decodedLen, if not
// -1, is sent as x-amz-decoded-content-length instead of the true length.
func (b chunkedBody) request(t testing.TB, decodedLen int, mutate func([]byte) []byte) *http.Request {
	t.Helper()
	encLen := len(b.encode(t, creds, make([]byte, 32), signTime))
	req := newClientRequest(t, "PUT", "https://s3.us-east-1.amazonaws.com/bucket/"+s3Key(oddKey), nil)
	// Like botocore, send a mutated body with Transfer-Encoding: chunked,
	// so that its length is not signed.
	req.ContentLength = int64(encLen)
	if mutate != nil {
		req.ContentLength = -1
	}
	req.Header.Set("Content-Encoding", "aws-chunked")
	if decodedLen == -1 {
		decodedLen = len(b.data)
	}
	req.Header.Set("X-Amz-Decoded-Content-Length", strconv.Itoa(decodedLen))
	if b.trailer != "" {
		req.Header.Set("X-Amz-Trailer", b.trailer)
	}
	sdkSign(t, creds, req, nil, b.payloadHash(), "s3")
	auth := req.Header.Get("Authorization")
	seed, _ := hex.DecodeString(auth[len(auth)-64:])
	body := b.encode(t, creds, seed, signTime)
	if len(body) != encLen {
		t.Fatalf("encoded length changed: %d != %d", len(body), encLen)
	}
	if mutate != nil {
		body = mutate(body)
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return toServer(t, req)
}

// TestChunkedAWSVector: the S3 documentation's "Example: PUT Object" with
// STREAMING-AWS4-HMAC-SHA256-PAYLOAD, 66560 bytes in 64 KiB chunks. It also
// shows that the test encoder above writes exactly what AWS documents.
func TestChunkedAWSVector(t *testing.T) {
	const (
		seed   = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
		chunk1 = "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
		chunk2 = "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
		final  = "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
	)
	data := bytes.Repeat([]byte("a"), 66560)
	body := "10000;chunk-signature=" + chunk1 + "\r\n" + string(data[:65536]) + "\r\n" +
		"400;chunk-signature=" + chunk2 + "\r\n" + string(data[65536:]) + "\r\n" +
		"0;chunk-signature=" + final + "\r\n\r\n"
	if len(body) != 66824 {
		t.Fatalf("body length %d, the documentation says 66824", len(body))
	}
	docTime := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	seedBytes, _ := hex.DecodeString(seed)
	enc := chunkedBody{data: data, chunkSize: 65536, signed: true}.
		encode(t, aws.Credentials{AccessKeyID: docAKID, SecretAccessKey: docSecret}, seedBytes, docTime)
	if string(enc) != body {
		t.Fatalf("the test encoder (aws-sdk-go-v2 StreamSigner) does not reproduce the documented body")
	}

	raw := "PUT /examplebucket/chunkObject.txt HTTP/1.1\r\nHost: s3.amazonaws.com\r\n" +
		"x-amz-date: 20130524T000000Z\r\nx-amz-storage-class: REDUCED_REDUNDANCY\r\n" +
		"Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=" + seed + "\r\n" +
		"x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD\r\nContent-Encoding: aws-chunked\r\n" +
		"x-amz-decoded-content-length: 66560\r\nContent-Length: 66824\r\n\r\n" + body
	v := newVerifier(docTime)
	res, err := v.Verify(parseRaw(t, raw))
	if err != nil {
		t.Fatalf("Verify: %v\n%s", err, canonicalOf(err))
	}
	got, err := readBody(t, res.Body)
	if err != nil || !bytes.Equal(got, data) || res.DecodedContentLength != 66560 {
		t.Fatalf("body: %d bytes, %v (decoded length %d)", len(got), err, res.DecodedContentLength)
	}

	// one changed signature digit in the second chunk fails before EOF
	bad := strings.Replace(raw, chunk2, chunk2[:63]+"8", 1)
	res, err = v.Verify(parseRaw(t, bad))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readBody(t, res.Body); kindOf(err) != BadSignature {
		t.Fatalf("tampered chunk signature: %v", err)
	}
}

// TestChunkedAWSTrailerVector: the S3 documentation's trailing-header
// example (STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER with a CRC32C
// trailer), in its own framing and in the compact one SDKs write.
func TestChunkedAWSTrailerVector(t *testing.T) {
	const (
		seed    = "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e"
		trailer = "x-amz-checksum-crc32c:sOO8/Q==\r\nx-amz-trailer-signature:d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435\r\n"
	)
	data := strings.Repeat("a", 66560)
	chunks := "10000;chunk-signature=b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2\r\n" + data[:65536] + "\r\n" +
		"400;chunk-signature=1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7\r\n" + data[65536:] + "\r\n" +
		"0;chunk-signature=2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992\r\n"
	docTime := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	for _, framing := range []struct{ name, body string }{
		{"documentation", chunks + "\r\n" + trailer},
		{"compact", chunks + trailer + "\r\n"},
	} {
		t.Run(framing.name, func(t *testing.T) {
			raw := "PUT /examplebucket/chunkObject.txt HTTP/1.1\r\nHost: s3.amazonaws.com\r\n" +
				"x-amz-date: 20130524T000000Z\r\nx-amz-storage-class: REDUCED_REDUNDANCY\r\n" +
				"Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer,Signature=" + seed + "\r\n" +
				"x-amz-content-sha256: STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER\r\nContent-Encoding: aws-chunked\r\n" +
				"x-amz-decoded-content-length: 66560\r\nx-amz-trailer: x-amz-checksum-crc32c\r\n" +
				"Content-Length: " + strconv.Itoa(len(framing.body)) + "\r\n\r\n" + framing.body
			res, err := newVerifier(docTime).Verify(parseRaw(t, raw))
			if err != nil {
				t.Fatalf("Verify: %v\n%s", err, canonicalOf(err))
			}
			got, err := readBody(t, res.Body)
			if err != nil || string(got) != data {
				t.Fatalf("body: %d bytes, %v", len(got), err)
			}
			if algo, v := res.ChecksumValue(); algo != "CRC32C" || v != "sOO8/Q==" {
				t.Errorf("ChecksumValue = %s %s", algo, v)
			}
		})
	}
}

func TestChunkedRoundTrip(t *testing.T) {
	data := make([]byte, 70001)
	for i := range data {
		data[i] = byte(i * 7)
	}
	var tests []chunkedBody
	for _, size := range []int{0, 1, 8192, len(data)} {
		tests = append(tests, chunkedBody{data: data[:size], chunkSize: 8192, signed: true})
		for _, tr := range []string{"x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-sha256", "x-amz-checksum-sha1", "x-amz-checksum-crc64nvme"} {
			tests = append(tests,
				chunkedBody{data: data[:size], chunkSize: 8192, signed: true, trailer: tr},
				chunkedBody{data: data[:size], chunkSize: 65536, signed: false, trailer: tr},
				chunkedBody{data: data[:size], chunkSize: 8192, signed: true, trailer: tr, docFraming: true})
		}
		tests = append(tests, chunkedBody{data: data[:size], chunkSize: 1000, signed: false})
	}
	for _, b := range tests {
		name := fmt.Sprintf("%s/%s/%d/doc=%v", b.payloadHash(), b.trailer, len(b.data), b.docFraming)
		t.Run(name, func(t *testing.T) {
			r := b.request(t, -1, nil)
			res, err := newVerifier(signTime).Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v\n%s", err, canonicalOf(err))
			}
			if res.DecodedContentLength != int64(len(b.data)) || r.ContentLength != int64(len(b.data)) {
				t.Errorf("DecodedContentLength %d, r.ContentLength %d", res.DecodedContentLength, r.ContentLength)
			}
			got, err := readBody(t, r.Body)
			if err != nil || !bytes.Equal(got, b.data) {
				t.Fatalf("body: %d bytes, %v", len(got), err)
			}
			algo, v := res.ChecksumValue()
			if b.trailer != "" && (v != trailerChecksum(t, b.trailer, b.data) || "x-amz-checksum-"+strings.ToLower(algo) != b.trailer) {
				t.Errorf("ChecksumValue = %s %s", algo, v)
			}
		})
	}
}

func TestChunkedTampered(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 1500) // 24000 bytes: 3 chunks of 8192
	signed := chunkedBody{data: data, chunkSize: 8192, signed: true, trailer: "x-amz-checksum-crc32"}
	plain := chunkedBody{data: data, chunkSize: 8192, signed: true}
	unsigned := chunkedBody{data: data, chunkSize: 8192, trailer: "x-amz-checksum-sha256"}

	// replace changes the n-th (0-based) occurrence of old.
	replace := func(old, new string, n int) func([]byte) []byte {
		return func(b []byte) []byte {
			i := -1
			for k := 0; k <= n; k++ {
				j := bytes.Index(b[i+1:], []byte(old))
				if j < 0 {
					panic("no " + old)
				}
				i += 1 + j
			}
			return append(append(append([]byte{}, b[:i]...), new...), b[i+len(old):]...)
		}
	}
	sigAt := func(b []byte, n int) string { // the n-th chunk-signature value
		i := -1
		for k := 0; k <= n; k++ {
			i += 1 + bytes.Index(b[i+1:], []byte("chunk-signature="))
		}
		return string(b[i+16 : i+16+64])
	}
	tests := []struct {
		name       string
		body       chunkedBody
		decodedLen int
		mutate     func([]byte) []byte
		want       Kind
	}{
		{"data byte flipped", signed, -1, func(b []byte) []byte { b[9000] ^= 1; return b }, BadSignature},
		{"data byte flipped, no trailer", plain, -1, func(b []byte) []byte { b[20000] ^= 1; return b }, BadSignature},
		{"chunk signature changed", signed, -1, func(b []byte) []byte {
			s := sigAt(b, 1)
			return replace(s, s[:10]+string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", s[10])+1)%16])+s[11:], 0)(b)
		}, BadSignature},
		{"chunks swapped", signed, -1, func(b []byte) []byte {
			// the first two chunks hold the same data; swap their headers' signatures
			s0, s1 := sigAt(b, 0), sigAt(b, 1)
			b = replace(s0, strings.Repeat("x", 64), 0)(b)
			b = replace(s1, s0, 0)(b)
			return replace(strings.Repeat("x", 64), s1, 0)(b)
		}, BadSignature},
		{"final chunk signature changed", signed, -1, func(b []byte) []byte {
			s := sigAt(b, 3)
			return replace(s, strings.Repeat("0", 64), 0)(b)
		}, BadSignature},
		{"trailer checksum edited", signed, -1, func(b []byte) []byte {
			v := trailerChecksum(t, "x-amz-checksum-crc32", data)
			return replace(v, b64([]byte{1, 2, 3, 4}), 0)(b)
		}, BadSignature},
		{"trailer checksum wrong but signed", chunkedBody{data: data, chunkSize: 8192, signed: true, trailer: "x-amz-checksum-crc32", trailerValue: b64([]byte{1, 2, 3, 4})}, -1, nil, ChecksumMismatch},
		{"trailer signature missing", signed, -1, func(b []byte) []byte {
			i := bytes.Index(b, []byte("x-amz-trailer-signature"))
			return append(b[:i:i], "\r\n"...)
		}, BadChunk},
		{"trailer signature changed", signed, -1, func(b []byte) []byte {
			i := bytes.Index(b, []byte("x-amz-trailer-signature:")) + len("x-amz-trailer-signature:")
			b[i] = "10"[b[i]&1]
			return b
		}, BadSignature},
		{"trailer signature too long", signed, -1, replace("x-amz-trailer-signature:", "x-amz-trailer-signature:0", 0), BadChunk},
		{"undeclared trailer", signed, -1, replace("x-amz-checksum-crc32:", "x-amz-meta-a:b\r\nx-amz-checksum-crc32:", 0), BadChunk},
		{"unsigned data byte flipped", unsigned, -1, func(b []byte) []byte { b[100] ^= 1; return b }, ChecksumMismatch},
		{"unsigned checksum missing", unsigned, -1, func(b []byte) []byte {
			i := bytes.Index(b, []byte("x-amz-checksum-sha256"))
			return append(b[:i:i], "\r\n"...)
		}, BadChunk},
		{"unsigned checksum not base64", unsigned, -1, replace("x-amz-checksum-sha256:", "x-amz-checksum-sha256:*", 0), ChecksumMismatch},
		{"decoded length larger than data", signed, len(data) + 1, nil, BadChunk},
		{"decoded length smaller than data", signed, len(data) - 1, nil, BadChunk},
		{"truncated inside data", signed, -1, func(b []byte) []byte { return b[:12000] }, BadChunk},
		{"truncated before final chunk", plain, -1, func(b []byte) []byte { return b[:bytes.LastIndex(b, []byte("0;chunk"))] }, BadChunk},
		{"data after the end", plain, -1, func(b []byte) []byte { return append(b, "junk"...) }, BadChunk},
		{"data not followed by CRLF", signed, -1, func(b []byte) []byte {
			i := bytes.Index(b, []byte("\r\n2000;"))
			b[i] = 'x'
			return b
		}, BadChunk},
		{"huge chunk size", signed, -1, replace("2000;", "ffffffffffffffff;", 0), BadChunk},
		{"chunk size 17 hex digits", unsigned, -1, replace("2000\r\n", "00000000000002000\r\n", 0), BadChunk},
		{"chunk size not hex", unsigned, -1, replace("2000\r\n", "2x00\r\n", 0), BadChunk},
		{"chunk size line too long", unsigned, -1, replace("2000\r\n", "2000;"+strings.Repeat("e", 5000)+"\r\n", 0), BadChunk},
		{"chunk header without CR", unsigned, -1, replace("2000\r\n", "2000\n", 0), BadChunk},
		{"unsigned chunk larger than the 64 MiB bound", unsigned, -1, replace("2000\r\n", "4000001\r\n", 0), BadChunk},
		{"signed chunk without signature", signed, -1, replace(";chunk-signature=", ";chunk-signaturX=", 1), BadChunk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.body.request(t, tt.decodedLen, tt.mutate)
			res, err := newVerifier(signTime).Verify(r)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			_, err = readBody(t, res.Body)
			if kindOf(err) != tt.want {
				t.Fatalf("body error %v, want %v", err, tt.want)
			}
			if _, v := res.ChecksumValue(); v != "" {
				t.Errorf("checksum value %q published for a failed body", v)
			}
		})
	}
}
