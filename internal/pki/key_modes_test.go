package pki

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A CA key that has become readable by others (restored from a backup,
// copied with cp, chmod-ed by a config tool) must be refused, as sealbox
// refuses a loose master key, not silently used to issue certificates.
func TestCARefusesLooseKeyFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadOrCreateCA(dir, "test CA"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, caFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir, "test CA"); err == nil {
		t.Fatalf("LoadOrCreateCA accepted %s with mode 0644 (world-readable CA private key)", caFile)
	}
}

// The pki directory holding the CA key must not stay group/world
// accessible when it already exists.
func TestLoadOrCreateCARestrictsExistingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCA(dir, "test CA"); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("pki dir left at mode %o after creating the CA key in it; want 0700", fi.Mode().Perm())
	}
}

// --tls-key: a private key file readable by every local user must be
// refused (at start and on reload).
func TestFileSourceRefusesWorldReadableKey(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.Issue(LeafRequest{CommonName: "x", Names: []string{"localhost"}, Purpose: ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := EncodeCertificate(c)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tls.pem")
	if err := os.WriteFile(p, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	if _, err := NewFileSource(p, p, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("NewFileSource accepted a private key file of mode 0644")
	}
}

// The stored serving leaf (DATA/pki/server.pem, key included) that has
// become world-readable must not be reused as is.
func TestRotatorDoesNotReuseLooseLeafFile(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "server.pem")
	req := LeafRequest{CommonName: "x", Names: []string{"localhost"}, Purpose: ServerAuth, Lifetime: time.Hour}
	r1, err := NewRotator(ca, req, p, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	r2, err := NewRotator(ca, req, p, slog.New(slog.DiscardHandler))
	if err != nil {
		return // refused: fine
	}
	if r2.Leaf().SerialNumber.Cmp(r1.Leaf().SerialNumber) == 0 {
		t.Fatal("Rotator reused a serving key from a file of mode 0644 (its key may have been read by others)")
	}
}
