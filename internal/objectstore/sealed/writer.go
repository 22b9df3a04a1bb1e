package sealed

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var errClosed = errors.New("sealed: write after Close")

// writer seals segments as they fill. It holds a full segment back until
// more data arrives, because only Close can say which segment is the last.
type writer struct {
	w       io.Writer
	aead    cipher.AEAD
	segSize int
	// buf holds up to segSize plaintext bytes waiting to be sealed, and
	// is where each segment is sealed before it is written.
	buf    []byte
	n      int   // plaintext bytes in buf
	next   int64 // index of the next segment
	err    error // first write error; every later call returns it
	closed bool
	ad     segmentAD
}

// NewWriter returns a WriteCloser that seals what is written to it into w
// under the 32-byte data key, bound to binding (the object's identity; the
// file opens only with the same binding). segmentSize is the plaintext size
// of a segment, a power of two from 4 KiB to 1 MiB, or 0 for
// DefaultSegmentSize. NewWriter writes the header to w before it returns.
//
// Close writes the last segment and must be called: until then the file is
// incomplete and does not open. Close does not close w.
func NewWriter(w io.Writer, key []byte, binding []byte, segmentSize int) (io.WriteCloser, error) {
	segSize, err := checkSegmentSize(segmentSize)
	if err != nil {
		return nil, fmt.Errorf("sealed: %w", err)
	}
	header := make([]byte, headerSize)
	copy(header, magic)
	header[versionOffset] = version
	binary.BigEndian.PutUint32(header[segSizeOffset:], uint32(segSize))
	rand.Read(header[saltOffset:macOffset])
	aead, macKey, err := fileKeys(key, binding, header)
	if err != nil {
		return nil, err
	}
	copy(header[macOffset:], headerMAC(macKey, header))
	if _, err := w.Write(header); err != nil {
		return nil, fmt.Errorf("sealed: write header: %w", err)
	}
	return &writer{
		w:       w,
		aead:    aead,
		segSize: segSize,
		buf:     make([]byte, segSize+segmentOverhead),
	}, nil
}

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	written := 0
	for len(p) > 0 {
		if w.n == w.segSize {
			// More data follows, so the buffered segment is not the last.
			if err := w.seal(w.buf[:w.n], false); err != nil {
				return written, err
			}
			w.n = 0
		}
		if w.n == 0 && len(p) > w.segSize {
			// A whole segment with more after it: seal it straight from p.
			if err := w.seal(p[:w.segSize], false); err != nil {
				return written, err
			}
			p = p[w.segSize:]
			written += w.segSize
			continue
		}
		c := copy(w.buf[w.n:w.segSize], p)
		w.n += c
		p = p[c:]
		written += c
	}
	return written, nil
}

// Close seals and writes the last segment. It does not close the underlying
// writer. Calling Close again returns the first call's result.
func (w *writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	return w.seal(w.buf[:w.n], true)
}

// seal seals plaintext as the next segment and writes it. plaintext is
// either a prefix of w.buf, which is sealed in place, or does not overlap it.
func (w *writer) seal(plaintext []byte, final bool) error {
	if !final && w.next == maxSegments-1 {
		// The last segment would need index 2^32.
		w.err = fmt.Errorf("sealed: object exceeds %d segments of %d bytes", int64(maxSegments), w.segSize)
		return w.err
	}
	out := w.aead.Seal(w.buf[:0], nil, plaintext, w.ad.set(w.next, final))
	if _, err := w.w.Write(out); err != nil {
		w.err = fmt.Errorf("sealed: write segment %d: %w", w.next, err)
		return w.err
	}
	w.next++
	return nil
}
