// Package sealed is the at-rest encryption format of convoy's object store.
// Every object byte convoy keeps on disk is encrypted and authenticated under
// the object's 32-byte data key, in fixed-size segments, so that an object of
// any size is written and read with one segment of memory, a Range GET
// decrypts only the segments it covers, and truncating, extending, reordering
// or swapping segments or whole files between objects is detected.
//
// The construction follows STREAM (Hoang, Reyhanitabar, Rogaway, Vizár), as
// age and Tink use it: each segment is sealed with AES-256-GCM, its position
// and whether it is the last one are authenticated with it, and so a reader
// that reaches the end has seen every segment in order and no more.
//
// # Format
//
// All integers are big-endian.
//
//	header (73 bytes)
//	  0   4  magic "CVS1"
//	  4   1  version, 1
//	  5   4  segment size S: plaintext bytes per segment, a power of two
//	         from 4 KiB to 1 MiB
//	  9  32  salt, random per file
//	 41  32  header MAC: HMAC-SHA256(macKey, bytes 0..40)
//	segments, in order, index i = 0, 1, …, N-1 (N ≥ 1)
//	  12     nonce, random per segment
//	  len(P) AES-256-GCM ciphertext of the segment's plaintext P
//	  16     GCM tag; additional data = uint32 i || byte final (1 on the
//	         last segment, 0 otherwise)
//
// Every segment but the last holds exactly S plaintext bytes; the last holds
// 1 to S, or 0 only when the whole object is empty, so that each plaintext
// length has exactly one ciphertext length (see [CiphertextSize]) and an
// empty object still carries one authenticated, final segment.
//
// The keys are per file: HKDF-SHA256 with the data key as secret, the salt as
// salt, and as info "convoy sealed v1", a zero byte, header bytes 0..8 and the
// caller's binding, expanded to 64 bytes: the first 32 are the AES-256-GCM
// segment key, the last 32 the header MAC key. A file therefore opens only
// under its own data key and its own binding; the MAC lets [NewReader] say so
// before any segment is read.
//
// # Why random nonces
//
// STREAM as age and Tink build it puts the segment index and the final flag in
// a counter nonce. Go's FIPS 140-3 module does not allow GCM with nonces the
// caller chooses: with GODEBUG=fips140=only, cipher.NewGCM returns an error,
// and only cipher.NewGCMWithRandomNonce is available. So that one format is
// written and read in every mode (a deployment that turns fips140=only on must
// still read what it wrote before), the nonce is random and stored with each
// segment, and the index and final flag move into the additional data, which
// GCM authenticates just as well. This costs 12 bytes per segment. Because the
// key is unique to the file, a nonce collision needs two segments of one file
// to draw the same 96 random bits; the format caps a file at 2^32 segments,
// the NIST SP 800-38D bound for random nonces under one key.
//
// # Written by hand
//
// The standard library has AEADs but no segmented streaming format, and
// convoy takes no dependencies for this: age's stream package is internal to
// age and uses ChaCha20-Poly1305, which is not FIPS-approved, and Tink's
// streaming AEAD brings all of Tink. Only the framing is written here; all
// cryptography is crypto/aes, crypto/cipher, crypto/hkdf and crypto/hmac.
//
// # What it does not detect
//
// Replacing an object's whole file with an older file sealed under the same
// data key and binding is not detected, so the binding should name the object
// version, not only the object key. A reader that stops before the end of an
// object (a Range GET) authenticates what it read, not the object's length.
package sealed

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// DefaultSegmentSize is the plaintext size of a segment when NewWriter is
// given 0.
const DefaultSegmentSize = 64 << 10

// ErrAuth reports a file that does not verify: the wrong key or binding,
// tampering, truncation, extension, or reordered segments. Errors wrapping
// it say which part failed.
var ErrAuth = errors.New("sealed: authentication failed")

const (
	magic   = "CVS1"
	version = 1

	minSegmentSize = 4 << 10
	maxSegmentSize = 1 << 20

	keySize  = 32
	saltSize = 32

	// Header layout: offsets of its fields (untyped, to mix with int64).
	versionOffset = 4
	segSizeOffset = versionOffset + 1
	saltOffset    = segSizeOffset + 4
	macOffset     = saltOffset + saltSize
	headerSize    = macOffset + sha256.Size

	nonceSize       = 12
	tagSize         = 16
	segmentOverhead = nonceSize + tagSize

	// maxSegments is 2^32: the index is a uint32 in the additional data,
	// and random 96-bit nonces should not be drawn more often under one key.
	maxSegments = 1 << 32

	kdfLabel = "convoy sealed v1\x00"
)

// validSegmentSize reports whether n is a segment size the format allows.
func validSegmentSize(n int) bool {
	return n >= minSegmentSize && n <= maxSegmentSize && n&(n-1) == 0
}

// checkSegmentSize returns the segment size to use for n, where 0 means the
// default.
func checkSegmentSize(n int) (int, error) {
	if n == 0 {
		return DefaultSegmentSize, nil
	}
	if !validSegmentSize(n) {
		return 0, fmt.Errorf("segment size %d is not a power of two from %d to %d", n, minSegmentSize, maxSegmentSize)
	}
	return n, nil
}

// CiphertextSize returns the size of the sealed file for a plaintext of n
// bytes in segments of segmentSize bytes (0 means DefaultSegmentSize). It
// returns -1 if no sealed file has that length: n is negative or needs more
// than 2^32 segments, or segmentSize is not a valid segment size.
func CiphertextSize(n int64, segmentSize int) int64 {
	s, err := checkSegmentSize(segmentSize)
	if err != nil || n < 0 {
		return -1
	}
	seg := int64(s)
	segments := max(1, n/seg)
	if n > seg && n%seg != 0 {
		segments++
	}
	if segments > maxSegments {
		return -1
	}
	return headerSize + n + segments*segmentOverhead
}

// layout returns the number of segments and the plaintext length of the
// last one for a file of size bytes, or ok false if a writer never produces
// a file of that size.
func layout(size int64, segSize int) (segments, lastLen int64, ok bool) {
	body := size - headerSize
	if body <= 0 {
		return 0, 0, false
	}
	full := int64(segSize) + segmentOverhead
	k, rem := body/full, body%full
	switch {
	case rem == 0:
		segments, lastLen = k, int64(segSize)
	case rem == segmentOverhead && k == 0: // the empty object
		segments, lastLen = 1, 0
	case rem > segmentOverhead:
		segments, lastLen = k+1, rem-segmentOverhead
	default: // a partial nonce and tag, or an empty segment after full ones
		return 0, 0, false
	}
	if segments > maxSegments {
		return 0, 0, false
	}
	return segments, lastLen, true
}

// fileKeys derives the segment AEAD and header MAC key of one file from the
// data key, the binding, and the header's first macOffset bytes.
func fileKeys(key, binding, header []byte) (cipher.AEAD, []byte, error) {
	if len(key) != keySize {
		return nil, nil, fmt.Errorf("sealed: data key has %d bytes, want %d", len(key), keySize)
	}
	info := make([]byte, 0, len(kdfLabel)+saltOffset+len(binding))
	info = append(info, kdfLabel...)
	info = append(info, header[:saltOffset]...)
	info = append(info, binding...)
	salt := header[saltOffset:macOffset]
	okm, err := hkdf.Key(sha256.New, key, salt, string(info), 2*keySize)
	if err != nil {
		return nil, nil, fmt.Errorf("sealed: derive file keys: %w", err)
	}
	block, err := aes.NewCipher(okm[:keySize])
	if err != nil {
		return nil, nil, fmt.Errorf("sealed: %w", err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, nil, fmt.Errorf("sealed: %w", err)
	}
	return aead, okm[keySize:], nil
}

// headerMAC returns the MAC of the header's first macOffset bytes.
func headerMAC(macKey, header []byte) []byte {
	m := hmac.New(sha256.New, macKey)
	m.Write(header[:macOffset])
	return m.Sum(nil)
}

// segmentAD is the additional data of a segment. Writer and Reader keep
// one each, because an array passed to cipher.AEAD escapes to the heap.
type segmentAD [5]byte

// set makes ad the additional data of segment i.
func (ad *segmentAD) set(i int64, final bool) []byte {
	binary.BigEndian.PutUint32(ad[:4], uint32(i))
	ad[4] = 0
	if final {
		ad[4] = 1
	}
	return ad[:]
}
