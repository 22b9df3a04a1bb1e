package sigv4

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"net/http"
	"strings"
)

// aws-chunked framing, as botocore's AwsChunkedWrapper, aws-sdk-go-v2 and
// the S3 documentation write it:
//
//	signed:   <hex-size>;chunk-signature=<sig>\r\n<data>\r\n ... 0;chunk-signature=<sig>\r\n
//	unsigned: <hex-size>\r\n<data>\r\n ... 0\r\n
//
// then, without a trailer, "\r\n"; with one, the trailer lines
// "x-amz-checksum-crc32:<b64>\r\n" (signed: then
// "x-amz-trailer-signature:<sig>\r\n") and "\r\n". The S3 documentation's
// signed example also puts "\r\n" between the final chunk and the trailer
// and leaves out the last "\r\n"; both forms are accepted.
const (
	// maxChunkSize bounds one chunk. Clients use 8 KiB to 1 MiB; data is
	// streamed, never buffered, but a chunk's signature is only known good
	// at its end, so a bound keeps unverified runs short.
	maxChunkSize = 64 << 20
	// maxHeaderLine bounds a chunk header: 16 hex digits, ";chunk-signature=",
	// 64 hex digits, with room to spare.
	maxHeaderLine = 256
	// maxTrailerLine and maxTrailers bound the trailer section.
	maxTrailerLine = 1024
	maxTrailers    = 8
	readBufferSize = 16 << 10
)

// chunkedReader decodes and verifies an aws-chunked body.
type chunkedReader struct {
	src  *bufio.Reader
	orig io.Closer
	res  *Result

	signed  bool
	trailer bool // the body ends with a trailer section
	amzDate string
	scope   string
	mac     hash.Hash // HMAC-SHA256 with the signing key
	prevSig []byte    // hex of the previous signature
	sts     []byte    // string-to-sign buffer
	chunk   hash.Hash // SHA-256 of the current chunk's data
	want    [32]byte  // the current chunk's claimed signature

	trailers []string  // names declared in x-amz-trailer
	ck       *checksum // from the header or a declared trailer; nil if none

	remaining int64 // data bytes left in the current chunk
	decoded   int64 // data bytes so far
	length    int64 // x-amz-decoded-content-length, -1 if absent
	err       error // sticky; io.EOF once everything verified
}

func newChunkedReader(r *http.Request, src io.ReadCloser, res *Result, pk payloadKind, ck *checksum, key []byte, amzDate, scope string, seed []byte) (*chunkedReader, *Error) {
	c := &chunkedReader{
		src:     bufio.NewReaderSize(src, readBufferSize),
		orig:    src,
		res:     res,
		signed:  pk == payloadStreamingSigned || pk == payloadStreamingSignedTrailer,
		trailer: pk == payloadStreamingSignedTrailer || pk == payloadStreamingUnsignedTrailer,
		amzDate: amzDate,
		scope:   scope,
		ck:      ck,
		length:  -1,
	}
	if v := r.Header.Get("X-Amz-Decoded-Content-Length"); v != "" {
		n, ok := atoiBounded(v, 1<<62)
		if !ok {
			return nil, errorf(Malformed, "x-amz-decoded-content-length must be a non-negative integer")
		}
		c.length = n
	}
	res.DecodedContentLength = c.length
	if c.trailer {
		for _, v := range r.Header.Values("X-Amz-Trailer") {
			for name := range strings.SplitSeq(v, ",") {
				name = strings.ToLower(strings.TrimSpace(name))
				if name == "" {
					continue
				}
				a := checksumByHeader(name)
				switch {
				case a == nil && strings.HasPrefix(name, "x-amz-checksum-"):
					return nil, errorf(UnsupportedAlgorithm, "trailing checksum "+quoteShort(name)+" is not supported")
				case a == nil:
					return nil, errorf(Malformed, "x-amz-trailer names "+quoteShort(name)+", which is not a checksum")
				case c.ck != nil:
					return nil, errorf(Malformed, "expecting a single x-amz-checksum- header or trailer")
				}
				c.ck = newChecksum(a)
				c.trailers = append(c.trailers, name)
			}
		}
	}
	if c.ck != nil {
		res.Checksum = c.ck.algo.name
	}
	if c.signed {
		c.mac = hmac.New(sha256.New, key)
		c.prevSig = hex.AppendEncode(make([]byte, 0, 64), seed)
		c.sts = make([]byte, 0, 256)
		c.chunk = sha256.New()
	}
	return c, nil
}

func (c *chunkedReader) Read(p []byte) (int, error) {
	for c.remaining == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if err := c.nextChunk(); err != nil {
			c.err = err
		}
	}
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > c.remaining {
		p = p[:c.remaining]
	}
	n, err := c.src.Read(p)
	if c.signed {
		c.chunk.Write(p[:n])
	}
	if c.ck != nil {
		c.ck.h.Write(p[:n])
	}
	c.remaining -= int64(n)
	c.decoded += int64(n)
	switch {
	case c.remaining == 0:
		if e := c.endChunk(); e != nil {
			c.err = e
		}
	case err == io.EOF:
		c.err = errorf(BadChunk, "the body ended inside a chunk")
	case err != nil:
		c.err = err
	}
	return n, c.err
}

func (c *chunkedReader) Close() error { return c.orig.Close() }

// nextChunk reads a chunk header; for the final chunk it reads and verifies
// the rest of the body and sets c.err to io.EOF.
func (c *chunkedReader) nextChunk() error {
	line, eof, err := c.readLine(maxHeaderLine)
	if err != nil {
		return err
	}
	if eof {
		return errorf(BadChunk, "the body ended before the final chunk")
	}
	sizeHex, ext, _ := bytes.Cut(line, []byte{';'})
	size, ok := parseChunkSize(sizeHex)
	if !ok {
		return errorf(BadChunk, "invalid chunk size "+quoteShort(string(sizeHex)))
	}
	if c.signed {
		sig, ok := bytes.CutPrefix(ext, []byte("chunk-signature="))
		if !ok || len(sig) != 64 {
			return errorf(BadChunk, "chunk header lacks a chunk-signature")
		}
		if _, err := hex.Decode(c.want[:], sig); err != nil {
			return errorf(BadChunk, "chunk-signature is not hex")
		}
		c.chunk.Reset()
	}
	if size > maxChunkSize {
		return errorf(BadChunk, "chunk is larger than 64 MiB")
	}
	if c.length >= 0 && c.decoded+size > c.length {
		return errorf(BadChunk, "the chunks hold more data than x-amz-decoded-content-length")
	}
	if size > 0 {
		c.remaining = size
		return nil
	}
	if c.signed {
		if err := c.verifyChunk(); err != nil {
			return err
		}
	}
	if err := c.finish(); err != nil {
		return err
	}
	return io.EOF
}

// endChunk verifies a chunk whose data has been read, and its closing CRLF.
func (c *chunkedReader) endChunk() error {
	if c.signed {
		if err := c.verifyChunk(); err != nil {
			return err
		}
	}
	cr, err1 := c.src.ReadByte()
	lf, err2 := c.src.ReadByte()
	if err1 == nil && err2 == nil && cr == '\r' && lf == '\n' {
		return nil
	}
	if err := firstErr(err1, err2); err != nil && err != io.EOF {
		return err
	}
	return errorf(BadChunk, "chunk data is not followed by CRLF")
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// verifyChunk checks c.want against the signature of the chunk hashed in
// c.chunk:
//
//	AWS4-HMAC-SHA256-PAYLOAD\n<amz-date>\n<scope>\n<previous signature>\n<sha256("")>\n<sha256(data)>
func (c *chunkedReader) verifyChunk() error {
	var sum [sha256.Size]byte
	b := append(c.sts[:0], "AWS4-HMAC-SHA256-PAYLOAD\n"...)
	b = c.appendCommon(b)
	b = append(b, emptySHA256+"\n"...)
	b = hex.AppendEncode(b, c.chunk.Sum(sum[:0]))
	if !c.check(b) {
		return errorf(BadSignature, "the chunk signature we calculated does not match the chunk-signature you provided")
	}
	return nil
}

func (c *chunkedReader) appendCommon(b []byte) []byte {
	b = append(b, c.amzDate...)
	b = append(b, '\n')
	b = append(b, c.scope...)
	b = append(b, '\n')
	b = append(b, c.prevSig...)
	return append(b, '\n')
}

// check compares the HMAC of the string to sign with c.want and, if it
// matches, makes c.want the previous signature.
func (c *chunkedReader) check(sts []byte) bool {
	c.sts = sts
	var sum [sha256.Size]byte
	c.mac.Reset()
	c.mac.Write(sts)
	if !hmac.Equal(c.mac.Sum(sum[:0]), c.want[:]) {
		return false
	}
	c.prevSig = hex.AppendEncode(c.prevSig[:0], c.want[:])
	return true
}

// finish reads what follows the final chunk — the trailer section or the
// closing CRLF — and checks the trailer signature, the end of the body, the
// decoded length and the checksum.
func (c *chunkedReader) finish() error {
	if c.trailer {
		if err := c.readTrailers(); err != nil {
			return err
		}
	} else {
		line, eof, err := c.readLine(maxHeaderLine)
		if err != nil {
			return err
		}
		if !eof && len(line) != 0 {
			return errorf(BadChunk, "the final chunk is not followed by CRLF")
		}
	}
	if _, err := c.src.Peek(1); err != io.EOF {
		if err != nil {
			return err
		}
		return errorf(BadChunk, "data after the end of the aws-chunked body")
	}
	if c.length >= 0 && c.decoded != c.length {
		return errorf(BadChunk, "the chunks hold less data than x-amz-decoded-content-length")
	}
	if c.ck != nil {
		if c.ck.want == nil {
			return errorf(BadChunk, "the trailer lacks "+c.ck.algo.header)
		}
		v, err := c.ck.verify()
		if err != nil {
			return err
		}
		c.res.checksumValue = v
	}
	return nil
}

func (c *chunkedReader) readTrailers() error {
	var canon []byte // "name:value\n" per trailer, what the trailer signature covers
	var seen [maxTrailers]bool
	signedOK := false
	for first := true; ; first = false {
		line, eof, err := c.readLine(maxTrailerLine)
		if err != nil {
			return err
		}
		if eof {
			break
		}
		if len(line) == 0 {
			if first && (c.signed || len(c.trailers) > 0) {
				continue // the documentation's CRLF after the final chunk
			}
			break
		}
		if signedOK {
			return errorf(BadChunk, "trailer after x-amz-trailer-signature")
		}
		n, v, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			return errorf(BadChunk, "trailer line is not name:value")
		}
		name := strings.ToLower(string(bytes.TrimSpace(n)))
		value := string(bytes.TrimSpace(v))
		if name == "x-amz-trailer-signature" && c.signed {
			if len(value) != 64 {
				return errorf(BadChunk, "x-amz-trailer-signature is not 64 hex digits")
			}
			if _, err := hex.Decode(c.want[:], []byte(value)); err != nil {
				return errorf(BadChunk, "x-amz-trailer-signature is not 64 hex digits")
			}
			// AWS4-HMAC-SHA256-TRAILER\n<amz-date>\n<scope>\n<previous signature>\n<sha256(trailers)>
			sum := sha256.Sum256(canon)
			b := append(c.sts[:0], "AWS4-HMAC-SHA256-TRAILER\n"...)
			b = c.appendCommon(b)
			b = hex.AppendEncode(b, sum[:])
			if !c.check(b) {
				return errorf(BadSignature, "the trailer signature we calculated does not match the x-amz-trailer-signature you provided")
			}
			signedOK = true
			continue
		}
		i := indexOf(c.trailers, name)
		if i < 0 {
			return errorf(BadChunk, "trailer "+quoteShort(name)+" was not declared in x-amz-trailer")
		}
		if seen[i] {
			return errorf(BadChunk, "trailer "+quoteShort(name)+" is repeated")
		}
		seen[i] = true
		if name == c.ck.algo.header && !c.ck.setWant(value) {
			return errorf(ChecksumMismatch, "value for "+name+" trailer is invalid")
		}
		canon = append(canon, name...)
		canon = append(canon, ':')
		canon = append(canon, value...)
		canon = append(canon, '\n')
	}
	if c.signed && !signedOK {
		return errorf(BadChunk, "the trailer lacks x-amz-trailer-signature")
	}
	for i, name := range c.trailers {
		if !seen[i] {
			return errorf(BadChunk, "the trailer lacks "+quoteShort(name))
		}
	}
	return nil
}

func indexOf(names []string, name string) int {
	for i, n := range names {
		if n == name {
			return i
		}
	}
	return -1
}

// readLine reads a CRLF-terminated line of at most max bytes and returns it
// without the CRLF. eof is true if the body ended before the line began; a
// line cut short by the end of the body is returned as if terminated.
func (c *chunkedReader) readLine(max int) (line []byte, eof bool, err error) {
	line, err = c.src.ReadSlice('\n')
	switch {
	case err == bufio.ErrBufferFull || len(line) > max+2:
		return nil, false, errorf(BadChunk, "aws-chunked line too long")
	case err == io.EOF && len(line) == 0:
		return nil, true, nil
	case err == io.EOF:
		return line, false, nil
	case err != nil:
		return nil, false, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, false, errorf(BadChunk, "aws-chunked line not terminated by CRLF")
	}
	return line[:len(line)-2], false, nil
}

// parseChunkSize parses 1 to 16 hex digits.
func parseChunkSize(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(d)
	}
	if n > 1<<62 {
		return 0, false
	}
	return int64(n), true
}
