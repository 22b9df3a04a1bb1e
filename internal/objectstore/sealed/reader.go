package sealed

import (
	"crypto/cipher"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Reader decrypts a sealed file with random access. It is safe for
// concurrent use; concurrent calls take turns.
type Reader struct {
	r        io.ReaderAt
	aead     cipher.AEAD
	segSize  int64
	segments int64
	lastLen  int64
	size     int64

	mu sync.Mutex
	// ct holds one segment's ciphertext as it is read; cache holds the
	// plaintext of segment cached (-1: none), so that reads smaller than a
	// segment decrypt it once. Both are allocated on the first read.
	ct      []byte
	cache   []byte
	cached  int64
	finalOK bool // the last segment has verified
	ad      segmentAD
}

// NewReader reads and verifies the header of the sealed file r, whose
// length is size bytes, and returns a Reader for its plaintext. It fails
// with an error wrapping ErrAuth if the header does not verify under key and
// binding, or if no sealed file has that length.
func NewReader(r io.ReaderAt, size int64, key []byte, binding []byte) (*Reader, error) {
	if len(key) != keySize {
		return nil, fmt.Errorf("sealed: data key has %d bytes, want %d", len(key), keySize)
	}
	if size < headerSize {
		return nil, fmt.Errorf("%w: file of %d bytes is shorter than a header", ErrAuth, size)
	}
	header := make([]byte, headerSize)
	if err := readFull(r, header, 0); err != nil {
		return nil, readError("header", err)
	}
	if string(header[:versionOffset]) != magic {
		return nil, fmt.Errorf("%w: not a sealed file", ErrAuth)
	}
	if v := header[versionOffset]; v != version {
		return nil, fmt.Errorf("%w: unsupported format version %d", ErrAuth, v)
	}
	// Check the segment size before anything is sized by it.
	segSize := int(binary.BigEndian.Uint32(header[segSizeOffset:]))
	if !validSegmentSize(segSize) {
		return nil, fmt.Errorf("%w: header has segment size %d", ErrAuth, segSize)
	}
	aead, macKey, err := fileKeys(key, binding, header)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(headerMAC(macKey, header), header[macOffset:]) {
		return nil, fmt.Errorf("%w: header does not verify: wrong key or binding, or the header was altered", ErrAuth)
	}
	segments, lastLen, ok := layout(size, segSize)
	if !ok {
		return nil, fmt.Errorf("%w: no sealed file is %d bytes long with %d-byte segments: truncated or extended", ErrAuth, size, segSize)
	}
	return &Reader{
		r:        r,
		aead:     aead,
		segSize:  int64(segSize),
		segments: segments,
		lastLen:  lastLen,
		size:     (segments-1)*int64(segSize) + lastLen,
		cached:   -1,
	}, nil
}

// Size returns the length of the plaintext, as the file's length implies
// it. A file cut or extended to another valid length reports another size,
// and reading its last segment fails with ErrAuth.
func (r *Reader) Size() int64 { return r.size }

// ReadAt reads len(p) plaintext bytes at offset off, decrypting only the
// segments they lie in, as io.ReaderAt specifies. It returns io.EOF only
// after the last segment has verified, so a reader that sees io.EOF has
// read an untruncated file. A segment that does not verify fails the read
// with an error wrapping ErrAuth, and n counts only verified bytes before it.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("sealed: negative offset")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if off >= r.size {
		return 0, r.eof()
	}
	n := 0
	for n < len(p) && off < r.size {
		i, within := off/r.segSize, off%r.segSize
		segLen := r.segmentLen(i)
		if i != r.cached && within == 0 && int64(len(p)-n) >= segLen {
			// The whole segment is wanted: decrypt it straight into p.
			if err := r.open(i, p[n:n:n+int(segLen)]); err != nil {
				return n, err
			}
			n += int(segLen)
			off += segLen
			continue
		}
		if err := r.load(i); err != nil {
			return n, err
		}
		c := copy(p[n:], r.cache[within:segLen])
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, r.eof()
	}
	return n, nil
}

// eof returns io.EOF once the last segment has verified, so that io.EOF
// always means the file ends where it should.
func (r *Reader) eof() error {
	if !r.finalOK {
		if err := r.load(r.segments - 1); err != nil {
			return err
		}
	}
	return io.EOF
}

// NewSectionReader returns a reader of the n plaintext bytes at offset off,
// for a Range GET. Reading it in pieces smaller than a segment decrypts each
// segment once.
func (r *Reader) NewSectionReader(off, n int64) io.Reader {
	return io.NewSectionReader(r, off, n)
}

// segmentLen returns the plaintext length of segment i.
func (r *Reader) segmentLen(i int64) int64 {
	if i == r.segments-1 {
		return r.lastLen
	}
	return r.segSize
}

// load decrypts segment i into the cache unless it is there.
func (r *Reader) load(i int64) error {
	if i == r.cached {
		return nil
	}
	if r.cache == nil {
		r.cache = make([]byte, r.segSize)
	}
	r.cached = -1
	if err := r.open(i, r.cache[:0]); err != nil {
		return err
	}
	r.cached = i
	return nil
}

// open reads segment i, verifies it and appends its plaintext to dst, which
// has the capacity for it.
func (r *Reader) open(i int64, dst []byte) error {
	if r.ct == nil {
		r.ct = make([]byte, r.segSize+segmentOverhead)
	}
	final := i == r.segments-1
	ct := r.ct[:r.segmentLen(i)+segmentOverhead]
	if err := readFull(r.r, ct, headerSize+i*(r.segSize+segmentOverhead)); err != nil {
		return readError(fmt.Sprintf("segment %d", i), err)
	}
	if _, err := r.aead.Open(dst, nil, ct, r.ad.set(i, final)); err != nil {
		return fmt.Errorf("%w: segment %d of %d does not verify", ErrAuth, i, r.segments)
	}
	if final {
		r.finalOK = true
	}
	return nil
}

// readFull reads len(p) bytes at off, or returns io.ErrUnexpectedEOF if the
// file ends first.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readError describes a failed read of what. A file that ends before its
// length said it would was truncated since, which is an ErrAuth.
func readError(what string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: file ends inside the %s", ErrAuth, what)
	}
	return fmt.Errorf("sealed: read %s: %w", what, err)
}
