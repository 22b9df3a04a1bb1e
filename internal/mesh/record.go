package mesh

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The record layer carries a tunnel once its TLS 1.3 handshake is done.
// Each record on the wire is
//
//	type (1) | length (3, big endian) | nonce (12) | ciphertext | tag (16)
//
// where length counts nonce, ciphertext and tag. The record is sealed with
// AES-256-GCM under the key of its direction; the additional data is the
// 4-byte header followed by the record's sequence number in its direction
// (8 bytes, big endian, from 0), which is not sent: a record that is
// dropped, replayed, reordered or moved to the other direction or to
// another tunnel does not open. The nonce is random (cipher.
// NewGCMWithRandomNonce, the construction Go's FIPS 140-3 module approves
// for caller-driven GCM), so a direction may carry 2^32 records at most.
//
// A direction ends with exactly one recFin (its sender reached end of
// file) or recReset (it gave up); a tunnel whose TCP stream ends without
// one was truncated, which is reported as an error, never as end of file.

// recordType is the first byte of a record.
type recordType byte

const (
	// recData carries bytes of the relayed connection.
	recData recordType = 1 + iota
	// recOpen is the first record of a stream tunnel, from the dialing
	// host: relay to this TCP port of the accepting host. Payload: port (2).
	recOpen
	// recFin: the sender will send no more data (TCP half-close).
	recFin
	// recReset: the sender abandons the connection. Payload: reason (1).
	recReset
	// recSubscribe is the first record of a control tunnel: send me the
	// TCP ports you listen on, now and whenever they change. No payload.
	recSubscribe
	// recPorts lists the accepting host's listening TCP ports (2 bytes
	// each, ascending), replacing the previous list.
	recPorts
)

func (t recordType) String() string {
	switch t {
	case recData:
		return "data"
	case recOpen:
		return "open"
	case recFin:
		return "fin"
	case recReset:
		return "reset"
	case recSubscribe:
		return "subscribe"
	case recPorts:
		return "ports"
	}
	return fmt.Sprintf("recordType(%d)", byte(t))
}

// Reasons carried by recReset.
const (
	resetAborted  byte = 1 // the peer's side of the connection failed or was reset
	resetRefused  byte = 2 // nothing listens on the port recOpen named
	resetProtocol byte = 3 // the peer broke the tunnel protocol
)

const (
	// maxPayload is the largest plaintext of one record. Large records
	// keep the system calls and wake-ups per byte few (see doc.go).
	maxPayload    = 1 << 20
	headerLen     = 4
	nonceLen      = 12
	tagLen        = 16
	sealOverhead  = nonceLen + tagLen
	maxRecordLen  = headerLen + sealOverhead + maxPayload
	keyLen        = 32
	maxRecordsDir = 1 << 32 // random 96-bit nonces: NIST SP 800-38D §8.3
)

var (
	errTruncated = errors.New("mesh tunnel: the stream ended without a closing record (truncated)")
	errAuth      = errors.New("mesh tunnel: a record failed authentication (tampered, reordered or replayed)")
	errTooMany   = errors.New("mesh tunnel: record limit of this key reached")
)

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != keyLen {
		return nil, fmt.Errorf("mesh tunnel: key of %d bytes, want %d", len(key), keyLen)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(block)
}

// sealer seals the records of one direction.
type sealer struct {
	aead cipher.AEAD
	seq  uint64
}

func newSealer(key []byte) (*sealer, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: a}, nil
}

// seal appends one record carrying payload (at most maxPayload bytes) to
// dst, which must not overlap payload.
func (s *sealer) seal(dst []byte, typ recordType, payload []byte) ([]byte, error) {
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("mesh tunnel: payload of %d bytes exceeds %d", len(payload), maxPayload)
	}
	if s.seq >= maxRecordsDir {
		return nil, errTooMany
	}
	var aad [headerLen + 8]byte
	putHeader(aad[:headerLen], typ, len(payload)+sealOverhead)
	binary.BigEndian.PutUint64(aad[headerLen:], s.seq)
	s.seq++
	dst = append(dst, aad[:headerLen]...)
	return s.aead.Seal(dst, nil, payload, aad[:]), nil
}

func putHeader(b []byte, typ recordType, n int) {
	b[0] = byte(typ)
	b[1], b[2], b[3] = byte(n>>16), byte(n>>8), byte(n)
}

// parseHeader reads a record header and checks its length.
func parseHeader(b []byte) (recordType, int, error) {
	typ := recordType(b[0])
	n := int(b[1])<<16 | int(b[2])<<8 | int(b[3])
	if typ < recData || typ > recPorts {
		return 0, 0, fmt.Errorf("mesh tunnel: unknown record type %d", b[0])
	}
	if n < sealOverhead || n > sealOverhead+maxPayload {
		return 0, 0, fmt.Errorf("mesh tunnel: record length %d out of range", n)
	}
	return typ, n, nil
}

// opener reads and opens the records of one direction from r. It reads
// as much as r has (up to a few records) per call to r.Read, so that a
// stream of small records costs few system calls.
type opener struct {
	r    io.Reader
	aead cipher.AEAD
	seq  uint64
	buf  []byte // buf[start:end] is read and not yet opened
	// start, end index buf.
	start, end int
	out        []byte // plaintext of the last record
	err        error  // sticky
}

func newOpener(r io.Reader, key []byte) (*opener, error) {
	a, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &opener{r: r, aead: a}, nil
}

// next returns the next record. Its payload is valid until the next call.
// At the end of the stream it returns errTruncated: a well-behaved peer
// ends each direction with a record, and the caller stops reading there.
func (o *opener) next() (recordType, []byte, error) {
	if o.err != nil {
		return 0, nil, o.err
	}
	typ, p, err := o.read()
	if err != nil {
		o.err = err
	}
	return typ, p, err
}

func (o *opener) read() (recordType, []byte, error) {
	if err := o.fill(headerLen); err != nil {
		return 0, nil, err
	}
	typ, n, err := parseHeader(o.buf[o.start:])
	if err != nil {
		return 0, nil, err
	}
	if err := o.fill(headerLen + n); err != nil {
		return 0, nil, err
	}
	if o.seq >= maxRecordsDir {
		return 0, nil, errTooMany
	}
	var aad [headerLen + 8]byte
	copy(aad[:], o.buf[o.start:o.start+headerLen])
	binary.BigEndian.PutUint64(aad[headerLen:], o.seq)
	body := o.buf[o.start+headerLen : o.start+headerLen+n]
	if need := n - sealOverhead; cap(o.out) < need {
		if o.out != nil {
			putBuf(o.out)
		}
		o.out = getBuf(need)[:0]
	}
	p, err := o.aead.Open(o.out[:0], nil, body, aad[:])
	if err != nil {
		return 0, nil, errAuth
	}
	o.seq++
	o.start += headerLen + n
	return typ, p, nil
}

// smallRead is the buffer a reader starts with: enough for the records of
// an idle or interactive tunnel. It takes a large one from a pool when a
// large record comes, and gives it back when it goes idle (release).
const smallRead = 8 << 10

// fill makes buf[start:] hold at least n bytes.
func (o *opener) fill(n int) error {
	if o.end-o.start >= n {
		return nil
	}
	switch {
	case o.buf == nil:
		o.buf = make([]byte, smallRead)
	case n > len(o.buf):
		// Room for two records of this size: then a read rarely has to
		// stop short of the next one.
		big := getBuf(2 * n)
		o.end = copy(big, o.buf[o.start:o.end])
		if len(o.buf) > smallRead {
			putBuf(o.buf)
		}
		o.start, o.buf = 0, big
	}
	if o.start+n > len(o.buf) || o.start == o.end {
		copy(o.buf, o.buf[o.start:o.end])
		o.end -= o.start
		o.start = 0
	}
	for o.end-o.start < n {
		k, err := o.r.Read(o.buf[o.end:])
		o.end += k
		if o.end-o.start >= n {
			return nil
		}
		if err == io.EOF {
			return errTruncated
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// release gives the reader's large buffers back, unless they hold bytes
// of records not read yet.
func (o *opener) release() {
	if o.start != o.end {
		return
	}
	if len(o.buf) > smallRead {
		putBuf(o.buf)
	}
	if o.out != nil {
		putBuf(o.out)
	}
	o.buf, o.out, o.start, o.end = nil, nil, 0, 0
}
