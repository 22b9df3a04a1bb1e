package pki

import (
	"crypto/x509"
	"net/url"
	"testing"
	"time"
)

// An ephemeral CA signs leaves, with URI SANs, that verify against it and
// nothing else, and cannot sign a CA below it.
func TestEphemeralCA(t *testing.T) {
	ca, err := NewEphemeralCA("job CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || !ca.Cert.MaxPathLenZero || ca.Cert.NotAfter.After(time.Now().Add(2*time.Hour)) {
		t.Fatalf("CA certificate: IsCA %v MaxPathLenZero %v NotAfter %v", ca.Cert.IsCA, ca.Cert.MaxPathLenZero, ca.Cert.NotAfter)
	}
	id, _ := url.Parse("convoy://job/j/host/algo-1")
	leaf, err := ca.Issue(LeafRequest{CommonName: "algo-1", Names: []string{"10.213.5.2"}, URIs: []*url.URL{id}, Purpose: PeerAuth, Lifetime: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.Leaf.URIs) != 1 || leaf.Leaf.URIs[0].String() != id.String() || len(leaf.Leaf.IPAddresses) != 1 {
		t.Fatalf("SANs: %v %v", leaf.Leaf.URIs, leaf.Leaf.IPAddresses)
	}
	if leaf.Leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatal("leaf outlives its CA")
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not verify: %v", err)
	}
	other, _ := NewEphemeralCA("job CA", time.Hour)
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: other.Pool()}); err == nil {
		t.Fatal("leaf verifies against another ephemeral CA of the same name")
	}
	sub, err := ca.IssueSubCA("below", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	below, _ := sub.Issue(LeafRequest{CommonName: "x", Lifetime: time.Hour})
	inter := x509.NewCertPool()
	inter.AddCert(sub.Cert)
	if _, err := below.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), Intermediates: inter}); err == nil {
		t.Fatal("a CA below an ephemeral CA verifies: its path length must be zero")
	}
	if _, err := NewEphemeralCA("x", 0); err == nil {
		t.Fatal("zero lifetime accepted")
	}
}
