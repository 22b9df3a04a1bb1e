package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

func testCert(t *testing.T) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"convoy.test"}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// handshake runs a real handshake over a loopback TCP connection.
func handshake(t *testing.T, server, client *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		serverErr <- tls.Server(c, server).Handshake()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		<-serverErr
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	if err := <-serverErr; err != nil {
		return tls.ConnectionState{}, err
	}
	return c.ConnectionState(), nil
}

func TestProfilesNegotiate(t *testing.T) {
	cert, pool := testCert(t)
	get := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	client := func(min, max uint16, suites []uint16, groups []tls.CurveID) *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "convoy.test", MinVersion: min, MaxVersion: max,
			CipherSuites: suites, CurvePreferences: groups}
	}
	cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}
	rsaKex := []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384}
	chacha12 := []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}
	tests := []struct {
		name    string
		profile Profile
		client  *tls.Config
		fail    bool
		version uint16
		suite   uint16
		group   tls.CurveID
	}{
		{"modern/default client", Modern, client(0, 0, nil, nil), false, tls.VersionTLS13, 0, tls.X25519MLKEM768},
		{"modern/classical client", Modern, client(0, 0, nil, []tls.CurveID{tls.X25519}), false, tls.VersionTLS13, 0, tls.X25519},
		{"modern/P-256 client", Modern, client(0, 0, nil, []tls.CurveID{tls.CurveP256}), false, tls.VersionTLS13, 0, tls.CurveP256},
		{"modern/P-384 only", Modern, client(0, 0, nil, []tls.CurveID{tls.CurveP384}), true, 0, 0, 0},
		{"modern/TLS 1.2 client", Modern, client(tls.VersionTLS12, tls.VersionTLS12, nil, nil), true, 0, 0, 0},
		{"modern/TLS 1.0 client", Modern, client(tls.VersionTLS10, tls.VersionTLS10, cbc, nil), true, 0, 0, 0},

		{"compat/default client", Compat, client(0, 0, nil, nil), false, tls.VersionTLS13, 0, tls.X25519MLKEM768},
		{"compat/TLS 1.2 GCM", Compat, client(tls.VersionTLS12, tls.VersionTLS12, nil, nil), false, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.X25519},
		{"compat/TLS 1.2 ChaCha", Compat, client(tls.VersionTLS12, tls.VersionTLS12, chacha12, nil), false, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.X25519},
		{"compat/TLS 1.2 P-384", Compat, client(tls.VersionTLS12, tls.VersionTLS12, nil, []tls.CurveID{tls.CurveP384}), false, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.CurveP384},
		{"compat/CBC only", Compat, client(tls.VersionTLS12, tls.VersionTLS12, cbc, nil), true, 0, 0, 0},
		{"compat/RSA key exchange only", Compat, client(tls.VersionTLS12, tls.VersionTLS12, rsaKex, nil), true, 0, 0, 0},
		{"compat/TLS 1.1", Compat, client(tls.VersionTLS11, tls.VersionTLS11, cbc, nil), true, 0, 0, 0},

		{"fips/default client", FIPS, client(0, 0, nil, nil), false, tls.VersionTLS13, 0, tls.SecP256r1MLKEM768},
		{"fips/P-384 client", FIPS, client(0, 0, nil, []tls.CurveID{tls.CurveP384}), false, tls.VersionTLS13, 0, tls.CurveP384},
		{"fips/X25519 only", FIPS, client(0, 0, nil, []tls.CurveID{tls.X25519}), true, 0, 0, 0},
		{"fips/TLS 1.2 GCM", FIPS, client(tls.VersionTLS12, tls.VersionTLS12, nil, nil), false, tls.VersionTLS12, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.CurveP256},
		{"fips/TLS 1.2 ChaCha only", FIPS, client(tls.VersionTLS12, tls.VersionTLS12, chacha12, nil), true, 0, 0, 0},
		{"fips/CBC only", FIPS, client(tls.VersionTLS12, tls.VersionTLS12, cbc, nil), true, 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := handshake(t, Server(tc.profile, get, ServerOptions{}), tc.client)
			if tc.fail {
				if err == nil {
					t.Fatalf("handshake succeeded (%s %s %s), want refusal",
						tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if st.Version != tc.version {
				t.Errorf("version %s, want %s", tls.VersionName(st.Version), tls.VersionName(tc.version))
			}
			if tc.suite != 0 && st.CipherSuite != tc.suite {
				t.Errorf("suite %s, want %s", tls.CipherSuiteName(st.CipherSuite), tls.CipherSuiteName(tc.suite))
			}
			pol := tc.profile.Policy()
			if st.Version == tls.VersionTLS13 {
				found := false
				for _, s := range pol.TLS13Suites {
					found = found || s == st.CipherSuite
				}
				if !found {
					t.Errorf("TLS 1.3 suite %s outside profile", tls.CipherSuiteName(st.CipherSuite))
				}
			}
			if st.CurveID != tc.group {
				t.Errorf("group %s, want %s", st.CurveID, tc.group)
			}
		})
	}
}

// A TLS 1.3 client whose first TLS 1.3 suite is not AES-GCM is held to
// TLS 1.2 by the fips profile (crypto/tls cannot restrict TLS 1.3 suites
// and would follow such a client to ChaCha20; Go's client cannot reorder
// its suites, so this is checked on the hook itself, and with openssl in
// TestFIPSChaChaFirstTLS13Client).
func TestFIPSRefusesTLS13WithoutAESGCM(t *testing.T) {
	if FIPSModuleEnabled() {
		t.Skip("with the FIPS 140-3 module on, crypto/tls holds TLS 1.3 to AES-GCM and the hook steps aside")
	}
	cert, _ := testCert(t)
	cfg := Server(FIPS, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }, ServerOptions{})
	got, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{
		CipherSuites:      []uint16{tls.TLS_CHACHA20_POLY1305_SHA256},
		SupportedVersions: []uint16{tls.VersionTLS13},
	})
	if err != nil || got == nil || got.MaxVersion != tls.VersionTLS12 {
		t.Fatalf("ChaCha-only TLS 1.3 hello: got config %v, err %v; want MaxVersion TLS 1.2", got, err)
	}
	got, err = cfg.GetConfigForClient(&tls.ClientHelloInfo{
		CipherSuites:      []uint16{tls.TLS_CHACHA20_POLY1305_SHA256, tls.TLS_AES_128_GCM_SHA256},
		SupportedVersions: []uint16{tls.VersionTLS13},
	})
	if err != nil || got == nil || got.MaxVersion != tls.VersionTLS12 {
		t.Fatalf("ChaCha-first TLS 1.3 hello that also offers AES-GCM: got config %v, err %v; want MaxVersion TLS 1.2", got, err)
	}
	got, err = cfg.GetConfigForClient(&tls.ClientHelloInfo{
		CipherSuites:      []uint16{0x0a0a, tls.TLS_AES_128_GCM_SHA256, tls.TLS_CHACHA20_POLY1305_SHA256},
		SupportedVersions: []uint16{tls.VersionTLS13},
	})
	if err != nil || got != nil {
		t.Fatalf("AES-GCM-first hello (after GREASE): got %v, %v; want the base config", got, err)
	}
}

func TestNoProfileAllowsWeakness(t *testing.T) {
	for _, p := range Profiles {
		pol := p.Policy()
		if pol.MinVersion < tls.VersionTLS12 {
			t.Errorf("%s: MinVersion %s", p, tls.VersionName(pol.MinVersion))
		}
		for _, id := range pol.Suites {
			for _, s := range tls.InsecureCipherSuites() {
				if s.ID == id {
					t.Errorf("%s: insecure suite %s", p, s.Name)
				}
			}
			name := tls.CipherSuiteName(id)
			if len(name) < 10 || name[:10] != "TLS_ECDHE_" {
				t.Errorf("%s: suite %s has no ECDHE key exchange", p, name)
			}
		}
	}
}

func TestParseProfile(t *testing.T) {
	for _, in := range []string{"modern", "COMPAT", " fips "} {
		if _, err := ParseProfile(in); err != nil {
			t.Errorf("ParseProfile(%q): %v", in, err)
		}
	}
	if _, err := ParseProfile("legacy"); err == nil {
		t.Error("ParseProfile(legacy) succeeded")
	}
}

// A caller's VerifyConnection runs in every configuration the fips profile
// answers with (the TLS 1.2 one for a ChaCha-first client too), after the
// profile's own suite check, which it does not replace.
func TestServerOptionsVerifyConnection(t *testing.T) {
	called := 0
	opts := ServerOptions{VerifyConnection: func(tls.ConnectionState) error { called++; return nil }}
	for _, p := range Profiles {
		cfg := Server(p, nil, opts)
		if cfg.VerifyConnection == nil {
			t.Fatalf("%s: no VerifyConnection", p)
		}
		approved := tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}
		if err := cfg.VerifyConnection(approved); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		if p != FIPS {
			continue
		}
		if err := cfg.VerifyConnection(tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_CHACHA20_POLY1305_SHA256}); err == nil {
			t.Error("fips: a caller's VerifyConnection replaced the approved-suite check")
		}
		if FIPSModuleEnabled() {
			continue
		}
		inner, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{CipherSuites: []uint16{tls.TLS_CHACHA20_POLY1305_SHA256}})
		if err != nil || inner == nil || inner.VerifyConnection == nil {
			t.Fatalf("fips: the TLS 1.2 configuration has no VerifyConnection: %v, %v", inner, err)
		}
		before := called
		if err := inner.VerifyConnection(tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}); err != nil || called != before+1 {
			t.Errorf("fips TLS 1.2 configuration: %v, caller's check run %d times", err, called-before)
		}
	}
	if called < len(Profiles) {
		t.Errorf("the caller's check ran %d times for %d profiles", called, len(Profiles))
	}
}
