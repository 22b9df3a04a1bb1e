package sealed

import (
	"bytes"
	"testing"
)

// TestNonceAndSaltUnique: every segment of a file has its own nonce
// and two files sealed under the same key, binding and plaintext share no
// salt, nonce or ciphertext byte run (so their segment keys differ).
func TestNonceAndSaltUnique(t *testing.T) {
	plaintext := make([]byte, 64*minSegmentSize) // zeros: identical segments
	a := sealBytes(t, plaintext, minSegmentSize, 0)
	b := sealBytes(t, plaintext, minSegmentSize, 0)
	if bytes.Equal(a[saltOffset:macOffset], b[saltOffset:macOffset]) {
		t.Fatal("two files share a salt")
	}
	seen := map[string]bool{}
	for _, f := range [][]byte{a, b} {
		for i := 0; i < 64; i++ {
			start := headerSize + i*(minSegmentSize+segmentOverhead)
			n := string(f[start : start+nonceSize])
			if seen[n] {
				t.Fatalf("nonce of segment %d repeats", i)
			}
			seen[n] = true
		}
	}
	// Identical plaintext segments must not give identical ciphertexts.
	s0 := a[headerSize+nonceSize : headerSize+nonceSize+64]
	s1 := a[headerSize+minSegmentSize+segmentOverhead+nonceSize:][:64]
	if bytes.Equal(s0, s1) || bytes.Equal(s0, b[headerSize+nonceSize:][:64]) {
		t.Fatal("identical plaintext segments have identical ciphertexts")
	}
}
