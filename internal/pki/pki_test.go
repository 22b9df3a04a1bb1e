package pki

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCAPersistsAndIsPrivate(t *testing.T) {
	dir := t.TempDir()
	ca1, err := LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	if !ca1.Cert.Equal(ca2.Cert) {
		t.Fatal("second load made a new CA")
	}
	fi, err := os.Stat(filepath.Join(dir, caFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key file mode %o, want 600", fi.Mode().Perm())
	}
	if ca1.Cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("CA key algorithm %s, want ECDSA", ca1.Cert.PublicKeyAlgorithm)
	}
}

func TestIssueVerifiesWithPurpose(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir(), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ca.IssueSubCA("jobs CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		issuer  *CA
		purpose Purpose
		usage   x509.ExtKeyUsage
		ok      bool
	}{
		{ca, ServerAuth, x509.ExtKeyUsageServerAuth, true},
		{ca, ServerAuth, x509.ExtKeyUsageClientAuth, false},
		{ca, ClientAuth, x509.ExtKeyUsageClientAuth, true},
		{ca, ClientAuth, x509.ExtKeyUsageServerAuth, false},
		{sub, PeerAuth, x509.ExtKeyUsageClientAuth, true},
		{sub, PeerAuth, x509.ExtKeyUsageServerAuth, true},
	} {
		c, err := tc.issuer.Issue(LeafRequest{CommonName: "x", Names: []string{"host.test", "10.0.0.1"}, Purpose: tc.purpose, Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		inter := x509.NewCertPool()
		for _, der := range c.Certificate[1:] {
			ic, _ := x509.ParseCertificate(der)
			inter.AddCert(ic)
		}
		_, err = c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter, DNSName: "10.0.0.1", KeyUsages: []x509.ExtKeyUsage{tc.usage}})
		if (err == nil) != tc.ok {
			t.Errorf("purpose %d usage %d: verify err %v, want ok=%v", tc.purpose, tc.usage, err, tc.ok)
		}
	}
	// A leaf of another CA must not verify against this one.
	other, _ := LoadOrCreateCA(t.TempDir(), "other")
	c, _ := other.Issue(LeafRequest{CommonName: "x", Names: []string{"host.test"}, Lifetime: time.Hour})
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "host.test"}); err == nil {
		t.Fatal("foreign leaf verified")
	}
}

func TestRotatorRenewsBeforeExpiry(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	req := LeafRequest{CommonName: "localhost", Names: []string{"localhost", "127.0.0.1"}, Purpose: ServerAuth, Lifetime: 3 * time.Second}
	path := filepath.Join(dir, "server.pem")
	r, err := NewRotator(ca, req, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	first := r.Leaf()
	renewed := make(chan *x509.Certificate, 4)
	r.OnRenew = func(c *x509.Certificate) { renewed <- c }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	select {
	case c := <-renewed:
		if c.SerialNumber.Cmp(first.SerialNumber) == 0 {
			t.Fatal("renewal served the same certificate")
		}
		if !time.Now().Before(first.NotAfter) {
			t.Fatal("renewed only after the old certificate expired")
		}
		got, _ := r.GetCertificate(nil)
		if got.Leaf.SerialNumber.Cmp(c.SerialNumber) != 0 {
			t.Fatal("GetCertificate does not serve the renewed certificate")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no renewal")
	}
	// Different names force a new leaf.
	r3, err := NewRotator(ca, LeafRequest{CommonName: "other", Names: []string{"other.test"}, Purpose: ServerAuth, Lifetime: time.Hour}, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(r3.Leaf().DNSNames) != 1 || r3.Leaf().DNSNames[0] != "other.test" {
		t.Fatalf("names %v after the request changed", r3.Leaf().DNSNames)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("leaf key file mode %o", fi.Mode().Perm())
	}
}

func TestRotatorReusesFreshLeaf(t *testing.T) {
	dir := t.TempDir()
	ca, _ := LoadOrCreateCA(dir, "test CA")
	req := LeafRequest{CommonName: "localhost", Names: []string{"localhost"}, Purpose: ServerAuth, Lifetime: time.Hour}
	path := filepath.Join(dir, "server.pem")
	r1, err := NewRotator(ca, req, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := NewRotator(ca, req, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if !r1.Leaf().Equal(r2.Leaf()) {
		t.Fatal("restart issued a new leaf although the stored one was fresh")
	}
	// A leaf signed by another CA is not reused.
	other, _ := LoadOrCreateCA(t.TempDir(), "other")
	r3, err := NewRotator(other, req, path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r3.Leaf().CheckSignatureFrom(other.Cert) != nil {
		t.Fatal("reused a leaf from another CA")
	}
}

func TestLoadCARejectsLeaf(t *testing.T) {
	dir := t.TempDir()
	ca, _ := LoadOrCreateCA(dir, "test CA")
	leaf, _ := ca.Issue(LeafRequest{CommonName: "x", Lifetime: time.Hour})
	pemBytes, _ := EncodeCertificate(leaf)
	p := filepath.Join(dir, "leaf.pem")
	os.WriteFile(p, pemBytes, 0o600)
	if _, err := LoadCA(p, p); err == nil {
		t.Fatal("a leaf certificate was accepted as a CA")
	}
}
