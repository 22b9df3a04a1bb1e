package kms

import (
	"context"
	"crypto/rand"
	"errors"

	"convoy/internal/iam"
)

// useKey resolves ref for a cryptographic operation, authorizes action on
// it for p and checks that its state allows cryptography.
func (s *Service) useKey(ctx context.Context, p *iam.Principal, action, ref string, encCtx map[string]string, via string) (*key, error) {
	k, alias, err := s.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := s.authorizeKey(ctx, p, action, k, cryptoConditions(encCtx, via, alias)); err != nil {
		return nil, err
	}
	if err := usable(k); err != nil {
		return nil, err
	}
	return k, nil
}

// encrypt seals plaintext under k's current key version.
func (s *Service) encrypt(ctx context.Context, k *key, plaintext []byte, encCtx map[string]string) ([]byte, error) {
	aead, err := s.cipherFor(ctx, k.ID, k.CurrentVersion)
	if err != nil {
		return nil, err
	}
	return sealBlob(aead, blobHeader{keyID: k.ID, version: k.CurrentVersion}, plaintext, encCtx)
}

// generate makes n random bytes and their blob under k.
func (s *Service) generate(ctx context.Context, k *key, n int, encCtx map[string]string) (plaintext, blob []byte, err error) {
	plaintext = make([]byte, n)
	rand.Read(plaintext)
	blob, err = s.encrypt(ctx, k, plaintext, encCtx)
	if err != nil {
		return nil, nil, err
	}
	return plaintext, blob, nil
}

// decrypt opens a blob for p, authorizing action (kms:Decrypt or
// kms:ReEncryptFrom) on the blob's key. keyRef, when given, must name that
// key. It returns the key and the version that had sealed the blob.
func (s *Service) decrypt(ctx context.Context, p *iam.Principal, action string, blob []byte, encCtx map[string]string, keyRef, via string) ([]byte, *key, uint32, error) {
	h, ok := parseBlob(blob)
	if !ok {
		return nil, nil, 0, invalidCiphertext()
	}
	k, err := s.getKey(ctx, s.db, h.keyID)
	if errors.Is(err, errNoKey) {
		return nil, nil, 0, invalidCiphertext() // not a blob of this convoy
	}
	if err != nil {
		return nil, nil, 0, err
	}
	if k, err = s.key(ctx, k.ID); err != nil {
		return nil, nil, 0, err // deleted: NotFoundException, as AWS
	}
	alias := ""
	if keyRef != "" {
		named, a, err := s.resolve(ctx, keyRef)
		if err != nil {
			return nil, nil, 0, err
		}
		if named.ID != k.ID {
			return nil, nil, 0, kmsError("IncorrectKeyException",
				"The key ID in the request does not identify the KMS key that encrypted the ciphertext.")
		}
		alias = a
	}
	if err := s.authorizeKey(ctx, p, action, k, cryptoConditions(encCtx, via, alias)); err != nil {
		return nil, nil, 0, err
	}
	if err := usable(k); err != nil {
		return nil, nil, 0, err
	}
	aead, err := s.cipherFor(ctx, k.ID, h.version)
	if errors.Is(err, errNoKey) {
		return nil, nil, 0, invalidCiphertext()
	}
	if err != nil {
		return nil, nil, 0, err
	}
	plain, err := openBlob(aead, blob, encCtx)
	if err != nil {
		return nil, nil, 0, invalidCiphertext()
	}
	return plain, k, h.version, nil
}
