package fipsexempt

import (
	"crypto/md5"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"
)

// TestKnownAnswers checks the hashes against RFC 1321 and FIPS 180 vectors,
// in this process and again under GODEBUG=fips140=only, where Go's own
// crypto/md5 refuses to run.
func TestKnownAnswers(t *testing.T) {
	h := MD5()
	h.Write([]byte("abc"))
	if got := hex.EncodeToString(h.Sum(nil)); got != "900150983cd24fb0d6963f7d28e17f72" {
		t.Fatalf("MD5(abc) = %s", got)
	}
	s := SHA1()
	s.Write([]byte("abc"))
	if got := hex.EncodeToString(s.Sum(nil)); got != "a9993e364706816aba3e25717850c26c9cd0d89d" {
		t.Fatalf("SHA1(abc) = %s", got)
	}
	if sum := MD5Sum([]byte("abc")); hex.EncodeToString(sum[:]) != "900150983cd24fb0d6963f7d28e17f72" {
		t.Fatal("MD5Sum")
	}
	if os.Getenv("FIPSEXEMPT_CHILD") != "" {
		// Without the exemption, the same use fails: the child proves
		// that it does run under enforcement.
		defer func() {
			if recover() == nil {
				t.Fatal("crypto/md5 ran under fips140=only: the test is not under enforcement")
			}
		}()
		m := md5.New()
		if _, err := m.Write([]byte("abc")); err == nil {
			t.Error("crypto/md5 accepted a write under fips140=only")
		}
		m.Sum(nil) // panics under enforcement
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestKnownAnswers$", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=only", "FIPSEXEMPT_CHILD=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("under fips140=only: %v\n%s", err, out)
	}
}
