package fsutil

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// WriteFileAtomic sets the mode with fchmod, so no umask loosens (or
// narrows) it, and it replaces a symlink planted at the target rather than
// writing through it.
func TestWriteFileAtomicModeAndSymlink(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	p := filepath.Join(dir, "secret")
	if err := WriteFileAtomic(p, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %o under umask 0, want 600", fi.Mode().Perm())
	}
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("orig"), 0o644)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(link, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "orig" {
		t.Fatalf("WriteFileAtomic wrote through a symlink: victim now %q", b)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink != 0 {
		t.Fatal("target is still a symlink")
	}
	syscall.Umask(0o022)
	p2 := filepath.Join(dir, "narrow")
	if err := WriteFileAtomic(p2, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(p2); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %o, want 644", fi.Mode().Perm())
	}
}
