package sealed

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"io"
	"testing"
)

const benchSize = 64 << 20

// onlyReader hides bytes.Reader's WriteTo, so io.Copy hands the writer
// 32 KiB at a time, as it does with an HTTP request body.
type onlyReader struct{ io.Reader }

// benchGCM is the baseline: one AES-256-GCM seal or open of the whole
// object, with the AEAD the format uses (the one FIPS 140-only mode allows).
func benchGCM(b *testing.B) cipher.AEAD {
	block, err := aes.NewCipher(testKey)
	if err != nil {
		b.Fatal(err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		b.Fatal(err)
	}
	return aead
}

func BenchmarkWrite(b *testing.B) {
	plaintext := randomBytes(1, benchSize)
	b.Run("sealed/io.Copy", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			w, err := NewWriter(io.Discard, testKey, testBinding, DefaultSegmentSize)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(w, onlyReader{bytes.NewReader(plaintext)}); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sealed/one-write", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			w, err := NewWriter(io.Discard, testKey, testBinding, DefaultSegmentSize)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := w.Write(plaintext); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gcm-one-call", func(b *testing.B) {
		aead := benchGCM(b)
		out := make([]byte, 0, benchSize+aead.Overhead())
		b.SetBytes(benchSize)
		for b.Loop() {
			aead.Seal(out[:0], nil, plaintext, nil)
		}
	})
}

func BenchmarkRead(b *testing.B) {
	plaintext := randomBytes(1, benchSize)
	file := sealBytes(b, plaintext, DefaultSegmentSize, 0)
	b.Run("sealed/io.Copy", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			r, err := NewReader(bytes.NewReader(file), int64(len(file)), testKey, testBinding)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r.NewSectionReader(0, r.Size())); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sealed/one-ReadAt", func(b *testing.B) {
		out := make([]byte, benchSize)
		b.SetBytes(benchSize)
		for b.Loop() {
			r, err := NewReader(bytes.NewReader(file), int64(len(file)), testKey, testBinding)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.ReadAt(out, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("gcm-one-call", func(b *testing.B) {
		aead := benchGCM(b)
		sealed := aead.Seal(nil, nil, plaintext, nil)
		out := make([]byte, 0, benchSize)
		b.SetBytes(benchSize)
		for b.Loop() {
			if _, err := aead.Open(out[:0], nil, sealed, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
