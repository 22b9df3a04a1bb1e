package e2e

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// A user's own CA (--ca-cert/--ca-key) issues convoy's serving certificate;
// a user's own certificate (--tls-cert/--tls-key) is served as given.
func TestUserSuppliedCAAndCertificate(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, "userca"), "Hospital IT root")
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "userca", "ca-key.pem") // key and certificate

	c := harness.Start(t, harness.Options{Args: []string{"--ca-cert", caFile, "--ca-key", caFile}})
	if c.CABundle != caFile {
		t.Fatalf("AWS_CA_BUNDLE is %q, want the user's CA %q", c.CABundle, caFile)
	}
	conn, err := tls.Dial("tcp", c.Addr, tlsconf.Client(tlsconf.Modern, ca.Pool(), "127.0.0.1"))
	if err != nil {
		t.Fatalf("leaf does not verify against the user's CA: %v", err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if leaf.Issuer.CommonName != "Hospital IT root" {
		t.Fatalf("issuer %q", leaf.Issuer.CommonName)
	}

	// A certificate the user manages, served as is.
	cert, err := ca.Issue(pki.LeafRequest{CommonName: "convoy.hospital.example", Names: []string{"127.0.0.1", "convoy.hospital.example"},
		Purpose: pki.ServerAuth, Lifetime: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, _ := pki.EncodeCertificate(cert)
	certFile := filepath.Join(dir, "server.pem")
	os.WriteFile(certFile, pemBytes, 0o600)
	c2 := harness.Start(t, harness.Options{Args: []string{"--tls-cert", certFile, "--tls-key", certFile, "--ca-cert", caFile}})
	conn, err = tls.Dial("tcp", c2.Addr, tlsconf.Client(tlsconf.Modern, ca.Pool(), "convoy.hospital.example"))
	if err != nil {
		t.Fatal(err)
	}
	got := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if !got.Equal(cert.Leaf) {
		t.Fatal("convoy did not serve the user's certificate")
	}
	// A leaf is refused as a CA.
	leafOnly := harness.Launch(t, harness.Options{Args: []string{"--ca-cert", certFile, "--ca-key", certFile}})
	if err := leafOnly.Wait(30 * time.Second); err == nil {
		t.Fatal("convoy accepted a leaf certificate as its CA")
	}
}
