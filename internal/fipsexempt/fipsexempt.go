// Package fipsexempt is the one place convoy uses algorithms that FIPS
// 140-3 does not approve. Each use is a data-integrity identifier that the
// S3 protocol fixes, never a security control:
//
//   - MD5: S3's ETag of an unencrypted or SSE-S3 object and of each
//     multipart part, and the Content-MD5 header clients send (DeleteObjects
//     requires it); a mismatch is a BadDigest, as on S3.
//   - SHA-1: the x-amz-checksum-sha1 flexible checksum a client may choose
//     for an object, verified and stored like CRC32.
//
// What protects the data is elsewhere: TLS, SigV4's HMAC-SHA256, and
// AES-256-GCM at rest. Under GODEBUG=fips140=only, Go's crypto/md5 and
// crypto/sha1 refuse to run; the hashes returned here run each call inside
// crypto/fips140.WithoutEnforcement, which exists for exactly such tightly
// scoped, named exemptions. Without fips140=only they are crypto/md5 and
// crypto/sha1 themselves.
package fipsexempt

import (
	"crypto/fips140"
	"crypto/md5"
	"crypto/sha1"
	"hash"
)

// MD5 returns an MD5 hash for S3 ETags and Content-MD5.
func MD5() hash.Hash { return wrap(md5.New()) }

// SHA1 returns a SHA-1 hash for x-amz-checksum-sha1.
func SHA1() hash.Hash { return wrap(sha1.New()) }

// MD5Sum is md5.Sum.
func MD5Sum(b []byte) (sum [md5.Size]byte) {
	fips140.WithoutEnforcement(func() { sum = md5.Sum(b) })
	return sum
}

func wrap(h hash.Hash) hash.Hash {
	if !fips140.Enforced() {
		return h
	}
	return exempt{h}
}

// exempt runs every call of h without FIPS 140-only enforcement.
type exempt struct{ h hash.Hash }

func (e exempt) Write(p []byte) (n int, err error) {
	fips140.WithoutEnforcement(func() { n, err = e.h.Write(p) })
	return n, err
}

func (e exempt) Sum(b []byte) (out []byte) {
	fips140.WithoutEnforcement(func() { out = e.h.Sum(b) })
	return out
}

func (e exempt) Reset()         { e.h.Reset() }
func (e exempt) Size() int      { return e.h.Size() }
func (e exempt) BlockSize() int { return e.h.BlockSize() }
