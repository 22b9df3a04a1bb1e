package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"

	"os/exec"
	"strings"
	"testing"
	"time"
)

// A TLS 1.3 client that offers AES-GCM but lists ChaCha20-Poly1305 first
// (what OpenSSL, mobile stacks and Go on hardware without AES do) must not
// get ChaCha20 from the fips profile, which promises AES-GCM only. Uses the
// system openssl as the client, since Go's client cannot reorder TLS 1.3
// suites.
func TestFIPSChaChaFirstTLS13Client(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl")
	}
	cert, _ := testCert(t)
	cfg := Server(FIPS, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }, ServerOptions{})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan tls.ConnectionState, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if tc.Handshake() == nil {
			got <- tc.ConnectionState()
		}
		close(got)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// TLS 1.3 with ChaCha20 first, and TLS 1.2 offered as well: the
	// profile answers with TLS 1.2 and AES-GCM. (A TLS 1.3-only client of
	// that kind is refused: the profile has nothing for it.)
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", ln.Addr().String(),
		"-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384",
		"-groups", "P-256")
	cmd.Stdin = strings.NewReader("")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_ = cmd.Run()
	cs, ok := <-got
	if !ok {
		t.Fatalf("handshake refused; want TLS 1.2 with AES-GCM: %s", out.String())
	}
	// With the FIPS module on, crypto/tls itself holds TLS 1.3 to AES-GCM.
	if !FIPS.allowsSuite(cs) || (!FIPSModuleEnabled() && cs.Version != tls.VersionTLS12) {
		t.Fatalf("fips profile negotiated %s %s with a ChaCha-first client that also offered AES-GCM; the profile promises AES-GCM only",
			tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	}
}

func (p Profile) allowsSuite(cs tls.ConnectionState) bool {
	pol := p.Policy()
	if cs.Version == tls.VersionTLS13 {
		for _, s := range pol.TLS13Suites {
			if s == cs.CipherSuite {
				return true
			}
		}
		return false
	}
	for _, s := range pol.Suites {
		if s == cs.CipherSuite {
			return true
		}
	}
	return false
}
