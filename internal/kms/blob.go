package kms

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
)

// A ciphertext blob names the key version that sealed it, so Decrypt needs
// no KeyId. Format 1, integers big-endian:
//
//	offset  size  field
//	0       3     magic "CVK"
//	3       1     format, 1
//	4       16    key ID (the key's UUID)
//	20      4     key version (1 for the key's first material, +1 per rotation)
//	24      12    AES-GCM nonce
//	36      n+16  AES-256-GCM ciphertext and tag
//
// The associated data is the 24-byte header followed by the canonical
// encryption context, so a blob whose header was edited, or that is opened
// with another context, fails authentication like any other tampering.
const (
	blobMagic    = "CVK"
	blobFormat   = 1
	headerLen    = 24
	nonceLen     = 12
	tagLen       = 16
	minBlobLen   = headerLen + nonceLen + tagLen
	maxBlobLen   = 6144 // CiphertextType's limit in the KMS API
	maxPlaintext = 4096 // PlaintextType's limit
)

// errBadBlob is every reason a blob does not open. Callers answer it with
// InvalidCiphertextException and never say which part failed.
var errBadBlob = errors.New("invalid ciphertext")

type blobHeader struct {
	keyID   string
	version uint32
}

func (h blobHeader) marshal() ([]byte, error) {
	id, ok := parseUUID(h.keyID)
	if !ok || h.version == 0 {
		return nil, errors.New("blob header: bad key ID or version")
	}
	b := make([]byte, 0, headerLen)
	b = append(b, blobMagic...)
	b = append(b, blobFormat)
	b = append(b, id[:]...)
	return binary.BigEndian.AppendUint32(b, h.version), nil
}

// parseBlob splits a blob into its header and the nonce and sealed bytes.
// It checks only the framing; authenticity is decided by openBlob.
func parseBlob(b []byte) (h blobHeader, ok bool) {
	if len(b) < minBlobLen || len(b) > maxBlobLen || string(b[:3]) != blobMagic || b[3] != blobFormat {
		return h, false
	}
	h.keyID = formatUUID([16]byte(b[4:20]))
	h.version = binary.BigEndian.Uint32(b[20:24])
	return h, h.version != 0
}

// sealBlob encrypts plaintext under aead (the material of h) bound to encCtx.
func sealBlob(aead cipher.AEAD, h blobHeader, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	header, err := h.marshal()
	if err != nil {
		return nil, err
	}
	// aead draws the nonce itself (cipher.NewGCMWithRandomNonce, the GCM
	// that Go's FIPS 140-3 module allows) and writes nonce || ciphertext ||
	// tag after the header.
	out := make([]byte, headerLen, headerLen+nonceLen+len(plaintext)+tagLen)
	copy(out, header)
	return aead.Seal(out, nil, plaintext, associatedData(header, encCtx)), nil
}

// openBlob decrypts a blob that parseBlob accepted, with the material of
// its header's key version.
func openBlob(aead cipher.AEAD, b []byte, encCtx map[string]string) ([]byte, error) {
	if len(b) < minBlobLen {
		return nil, errBadBlob
	}
	header := b[:headerLen]
	plain, err := aead.Open(nil, nil, b[headerLen:], associatedData(header, encCtx))
	if err != nil {
		return nil, errBadBlob
	}
	return plain, nil
}

func associatedData(header []byte, encCtx map[string]string) []byte {
	return append(slices.Clip(header), canonicalContext(encCtx)...)
}

// canonicalContext encodes an encryption context so that two contexts have
// the same encoding exactly when they are equal: the pair count, then each
// pair in byte order of its key, every string length-prefixed (no separator
// can be forged by a key or value containing it).
func canonicalContext(encCtx map[string]string) []byte {
	keys := make([]string, 0, len(encCtx))
	size := 4
	for k, v := range encCtx {
		keys = append(keys, k)
		size += 8 + len(k) + len(v)
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		v := encCtx[k]
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = append(b, k...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// newKeyID returns a random (version 4) UUID, the form of AWS key IDs.
func newKeyID() string {
	var u [16]byte
	rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return formatUUID(u)
}

func formatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// parseUUID accepts the 8-4-4-4-12 hex form, in either case.
func parseUUID(s string) (u [16]byte, ok bool) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, false
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, false
	}
	return u, true
}
