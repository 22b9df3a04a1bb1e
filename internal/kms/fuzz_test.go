package kms

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"convoy/internal/awsproto"
)

// FuzzDecryptBlob feeds arbitrary bytes to Decrypt as a ciphertext blob:
// it must never panic, must fail with an AWS error, and only the genuine
// blob may decrypt.
func FuzzDecryptBlob(f *testing.F) {
	e := newEnv(f)
	id := e.createKey(nil)
	encCtx := map[string]string{"k": "v"}
	plain := []byte("fuzz plaintext")
	k, err := e.kms.key(e.ctx, id)
	if err != nil {
		f.Fatal(err)
	}
	genuine, err := e.kms.encrypt(e.ctx, k, plain, encCtx)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(genuine)
	f.Add(genuine[:headerLen])
	f.Add(genuine[:minBlobLen])
	f.Add([]byte{})
	f.Add([]byte("CVK\x01"))
	f.Add(append(bytes.Clone(genuine), 0))
	v2 := bytes.Clone(genuine)
	binary.BigEndian.PutUint32(v2[20:24], 0xffffffff)
	f.Add(v2)
	f.Fuzz(func(t *testing.T, blob []byte) {
		got, keyARN, err := e.kms.Decrypt(e.ctx, e.admin, blob, encCtx, "")
		if err == nil {
			if !bytes.Equal(blob, genuine) || !bytes.Equal(got, plain) || keyARN != k.ARN {
				t.Fatalf("a blob that is not the genuine one decrypted: % x", blob)
			}
			return
		}
		var ae *awsproto.Error
		if !errors.As(err, &ae) || ae.Code != "InvalidCiphertextException" {
			t.Fatalf("blob % x: %v", blob, err)
		}
		// The same through the JSON API, framing included.
		if len(blob) > 0 && len(blob) <= maxBlobLen {
			te := *e
			te.t = t
			if _, err := te.call(e.admin, "Decrypt", map[string]any{"CiphertextBlob": blob, "EncryptionContext": encCtx}); err == nil {
				t.Fatalf("blob % x decrypted through the API", blob)
			}
		}
	})
}
