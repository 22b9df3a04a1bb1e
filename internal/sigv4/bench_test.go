package sigv4

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// BenchmarkVerifyHeader verifies a typical SDK-signed STS POST: parse,
// buffer and hash the form body, canonical request, HMAC.
func BenchmarkVerifyHeader(b *testing.B) {
	c := findCase(b, "sts form POST")
	r := c.sign(b)
	body := []byte(c.body)
	run := func(b *testing.B, v func() *Verifier) {
		b.ReportAllocs()
		for b.Loop() {
			r.Body = io.NopCloser(bytes.NewReader(body))
			if _, err := v().Verify(r); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("cached key", func(b *testing.B) {
		v := newVerifier(signTime)
		run(b, func() *Verifier { return v })
	})
	b.Run("cold key", func(b *testing.B) {
		run(b, func() *Verifier { return newVerifier(signTime) })
	})
}

// BenchmarkChunkedDecode decodes an 8 MiB aws-chunked body in 64 KiB chunks.
func BenchmarkChunkedDecode(b *testing.B) {
	data := bytes.Repeat([]byte("benchmark data, "), 8<<20/16)
	for _, tc := range []struct {
		name string
		body chunkedBody
	}{
		{"signed CRC32 trailer", chunkedBody{data: data, chunkSize: 64 << 10, signed: true, trailer: "x-amz-checksum-crc32"}},
		{"signed, no trailer", chunkedBody{data: data, chunkSize: 64 << 10, signed: true}},
		{"unsigned CRC32 trailer", chunkedBody{data: data, chunkSize: 64 << 10, trailer: "x-amz-checksum-crc32"}},
		{"unsigned SHA256 trailer", chunkedBody{data: data, chunkSize: 64 << 10, trailer: "x-amz-checksum-sha256"}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			seed := bytes.Repeat([]byte{1}, 32)
			enc := tc.body.encode(b, creds, seed, signTime)
			key := refSigningKey(secret, "20261125", "us-east-1", "s3")
			h := http.Header{}
			if tc.body.trailer != "" {
				h.Set("X-Amz-Trailer", tc.body.trailer)
			}
			r := &http.Request{Header: h}
			pk, _ := classifyPayload(tc.body.payloadHash())
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				cr, err := newChunkedReader(r, io.NopCloser(bytes.NewReader(enc)), &Result{}, pk, nil, key,
					signTime.Format(amzDateForm), "20261125/us-east-1/s3/aws4_request", seed)
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, cr); err != nil || n != int64(len(data)) {
					b.Fatal(n, err)
				}
			}
		})
	}
}
