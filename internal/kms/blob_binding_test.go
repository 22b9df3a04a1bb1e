package kms

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// TestEncryptionContextUnambiguous: contexts that a "k=v" or concatenating
// encoding would confuse get distinct AADs, and a blob sealed under one of
// them does not open under the other.
func TestEncryptionContextUnambiguous(t *testing.T) {
	pairs := [][2]map[string]string{
		{{"a": "b=c"}, {"a=b": "c"}},
		{{"a": "b,c=d"}, {"a": "b", "c": "d"}},
		{{"a": "b&c=d"}, {"a": "b", "c": "d"}},
		{{"a": "b\nc=d"}, {"a": "b", "c": "d"}},
		{{"a": "b\x00c"}, {"a": "b"}},
		{{"ab": ""}, {"a": "b"}},
		{{"a": strings.Repeat("x", 300)}, {"a": strings.Repeat("x", 44)}}, // would collide with a 1-byte length prefix
	}
	aead := testAEAD(t)
	h := blobHeader{keyID: newKeyID(), version: 1}
	for _, p := range pairs {
		if bytes.Equal(canonicalContext(p[0]), canonicalContext(p[1])) {
			t.Errorf("%q and %q encode alike", p[0], p[1])
		}
		blob, err := sealBlob(aead, h, []byte("dk"), p[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := openBlob(aead, blob, p[1]); err == nil {
			t.Errorf("blob sealed with %q opens with %q", p[0], p[1])
		}
	}
}

// TestBlobRelabelFails: under the same material, a blob relabelled as
// another version or another key ID does not open (the header is in the
// AAD), so rotation cannot be confused even if two versions shared material.
func TestBlobRelabelFails(t *testing.T) {
	aead := testAEAD(t)
	ctx := map[string]string{"bucket": "b"}
	blob, err := sealBlob(aead, blobHeader{keyID: newKeyID(), version: 1}, []byte("secret"), ctx)
	if err != nil {
		t.Fatal(err)
	}
	v2 := bytes.Clone(blob)
	binary.BigEndian.PutUint32(v2[20:24], 2)
	other, _ := parseUUID(newKeyID())
	k2 := bytes.Clone(blob)
	copy(k2[4:20], other[:])
	for name, b := range map[string][]byte{"version 2": v2, "other key": k2} {
		if _, ok := parseBlob(b); !ok {
			t.Fatalf("%s: framing refused", name)
		}
		if _, err := openBlob(aead, b, ctx); err == nil {
			t.Errorf("%s: relabelled blob opens", name)
		}
	}
}
