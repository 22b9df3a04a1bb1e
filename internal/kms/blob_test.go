package kms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"testing"
)

func testAEAD(t testing.TB) cipher.AEAD {
	t.Helper()
	k := make([]byte, 32)
	rand.Read(k)
	block, err := aes.NewCipher(k)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		t.Fatal(err)
	}
	return aead
}

func TestBlobLayout(t *testing.T) {
	aead := testAEAD(t)
	id := newKeyID()
	h := blobHeader{keyID: id, version: 7}
	plain := []byte("hello, blob")
	blob, err := sealBlob(aead, h, plain, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(blob) != headerLen+nonceLen+len(plain)+tagLen {
		t.Fatalf("blob is %d bytes", len(blob))
	}
	uuid, _ := parseUUID(id)
	if string(blob[:3]) != "CVK" || blob[3] != 1 || !bytes.Equal(blob[4:20], uuid[:]) || binary.BigEndian.Uint32(blob[20:24]) != 7 {
		t.Fatalf("header: % x", blob[:headerLen])
	}
	if bytes.Contains(blob, plain) {
		t.Fatal("plaintext visible in the blob")
	}
	got, ok := parseBlob(blob)
	if !ok || got != h {
		t.Fatalf("parseBlob = %+v, %v", got, ok)
	}
	out, err := openBlob(aead, blob, nil)
	if err != nil || !bytes.Equal(out, plain) {
		t.Fatalf("openBlob = %q, %v", out, err)
	}
	// Two encryptions of one plaintext differ (fresh nonce).
	again, _ := sealBlob(aead, h, plain, nil)
	if bytes.Equal(again, blob) {
		t.Fatal("nonce reused")
	}
}

func TestBlobTampering(t *testing.T) {
	aead := testAEAD(t)
	h := blobHeader{keyID: newKeyID(), version: 1}
	encCtx := map[string]string{"purpose": "test"}
	blob, err := sealBlob(aead, h, []byte("secret data"), encCtx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		offset int
	}{
		{"magic", 0}, {"format", 3}, {"key id", 10}, {"version", 23},
		{"nonce", headerLen + 3}, {"ciphertext", headerLen + nonceLen + 2}, {"tag", len(blob) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := bytes.Clone(blob)
			bad[tc.offset] ^= 0x01
			if _, ok := parseBlob(bad); ok {
				if _, err := openBlob(aead, bad, encCtx); err != errBadBlob {
					t.Fatalf("tampered %s opened: %v", tc.name, err)
				}
			}
		})
	}
	for _, n := range []int{0, 1, headerLen, minBlobLen - 1} {
		if _, ok := parseBlob(blob[:min(n, len(blob))]); ok {
			t.Errorf("a %d-byte blob parses", n)
		}
	}
	if _, ok := parseBlob(make([]byte, maxBlobLen+1)); ok {
		t.Error("an oversized blob parses")
	}
	zeroVersion := bytes.Clone(blob)
	binary.BigEndian.PutUint32(zeroVersion[20:24], 0)
	if _, ok := parseBlob(zeroVersion); ok {
		t.Error("version 0 parses")
	}
}

func TestEncryptionContextBinding(t *testing.T) {
	aead := testAEAD(t)
	h := blobHeader{keyID: newKeyID(), version: 1}
	sealedWith := map[string]string{"bucket": "data", "key": "a/b"}
	blob, err := sealBlob(aead, h, []byte("payload"), sealedWith)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ctx  map[string]string
		ok   bool
	}{
		{"same", map[string]string{"bucket": "data", "key": "a/b"}, true},
		{"same, other insertion order", map[string]string{"key": "a/b", "bucket": "data"}, true},
		{"none", nil, false},
		{"empty", map[string]string{}, false},
		{"other value", map[string]string{"bucket": "data", "key": "a/c"}, false},
		{"missing pair", map[string]string{"bucket": "data"}, false},
		{"extra pair", map[string]string{"bucket": "data", "key": "a/b", "x": ""}, false},
		{"keys and values swapped", map[string]string{"data": "bucket", "a/b": "key"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openBlob(aead, blob, tc.ctx)
			if (err == nil) != tc.ok {
				t.Fatalf("open with %v: %v", tc.ctx, err)
			}
		})
	}
}

func TestCanonicalContext(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b map[string]string
		same bool
	}{
		{"nil and empty", nil, map[string]string{}, true},
		{"order", map[string]string{"a": "1", "b": "2"}, map[string]string{"b": "2", "a": "1"}, true},
		{"boundary moved", map[string]string{"a": "bc"}, map[string]string{"ab": "c"}, false},
		{"pair split", map[string]string{"a": "b\x00\x00\x00\x01c"}, map[string]string{"a": "b", "c": ""}, false},
		{"empty value vs none", map[string]string{"a": ""}, nil, false},
		{"case", map[string]string{"A": "1"}, map[string]string{"a": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := bytes.Equal(canonicalContext(tc.a), canonicalContext(tc.b)); got != tc.same {
				t.Fatalf("equal encodings = %v, want %v", got, tc.same)
			}
		})
	}
}

func TestUUID(t *testing.T) {
	for range 100 {
		id := newKeyID()
		u, ok := parseUUID(id)
		if !ok || formatUUID(u) != id || id[14] != '4' {
			t.Fatalf("round trip of %s", id)
		}
	}
	for _, bad := range []string{"", "x", "1234abcd-12ab-34cd-56ef-1234567890a", "1234abcd-12ab-34cd-56ef-1234567890abc",
		"1234abcd_12ab-34cd-56ef-1234567890ab", "1234abcg-12ab-34cd-56ef-1234567890ab"} {
		if _, ok := parseUUID(bad); ok {
			t.Errorf("%q parses as a UUID", bad)
		}
	}
}
