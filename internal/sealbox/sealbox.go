// Package sealbox encrypts small secrets (access-key secrets, data keys)
// before they are written to the database, with AES-256-GCM under a master
// key kept in a file of mode 0600 outside the database. A copy of the
// database alone reveals no secret. Each sealed value is bound to its context
// (for example the access key ID it belongs to) as associated data, so a
// sealed value moved to another row fails to open.
package sealbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"convoy/internal/fsutil"
)

const keySize = 32

// Box seals and opens values under one master key.
type Box struct {
	aead cipher.AEAD
}

// LoadOrCreate reads the master key at path, creating it on first use.
func LoadOrCreate(path string) (*Box, error) {
	key, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key = make([]byte, keySize)
		rand.Read(key)
		if err := fsutil.WriteFileAtomic(path, key, 0o600); err != nil {
			return nil, fmt.Errorf("write master key: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("read master key: %w", err)
	}
	if len(key) != keySize {
		return nil, fmt.Errorf("master key %s has %d bytes, want %d: the file is damaged", path, len(key), keySize)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("master key %s is readable by others (mode %o): chmod 600 it", path, fi.Mode().Perm())
	}
	return New(key)
}

// New returns a box for a 32-byte key.
func New(key []byte) (*Box, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	// Random nonces drawn inside the AEAD: the one GCM construction Go's
	// FIPS 140-3 module allows under GODEBUG=fips140=only. The layout,
	// nonce || ciphertext || tag, is the same as before it was used.
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		return nil, err
	}
	return &Box{aead: aead}, nil
}

// Seal encrypts plaintext bound to context.
func (b *Box) Seal(plaintext, context []byte) []byte {
	return b.aead.Seal(make([]byte, 0, len(plaintext)+b.aead.Overhead()), nil, plaintext, context)
}

// Open decrypts a value sealed with the same context.
func (b *Box) Open(sealed, context []byte) ([]byte, error) {
	if len(sealed) < b.aead.Overhead() {
		return nil, errors.New("sealed value too short")
	}
	out, err := b.aead.Open(nil, nil, sealed, context)
	if err != nil {
		return nil, errors.New("sealed value does not open: wrong master key or tampered data")
	}
	return out, nil
}
