package tlsconf

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// peerCert is a self-signed certificate for both ends of a mesh tunnel
// (the pool trusting it stands for the job's CA).
func peerCert(t *testing.T) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "peer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, IsCA: true, BasicConstraintsValid: true,
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

func TestMeshConfigs(t *testing.T) {
	cert, pool := peerCert(t)
	var verified []string
	opts := func(side string, err error) MeshOptions {
		return MeshOptions{Certificate: cert, Roots: pool, Verify: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no peer certificate")
			}
			verified = append(verified, side)
			return err
		}}
	}
	for _, tc := range []struct {
		name    string
		profile Profile
		server  *tls.Config
		client  *tls.Config
		wantErr string
		group   tls.CurveID
	}{
		{"modern", Modern, MeshServer(Modern, opts("server", nil)), MeshClient(Modern, "127.0.0.1", opts("client", nil)), "", tls.X25519MLKEM768},
		{"fips", FIPS, MeshServer(FIPS, opts("server", nil)), MeshClient(FIPS, "127.0.0.1", opts("client", nil)), "", tls.SecP256r1MLKEM768},
		{"client without certificate", Modern, MeshServer(Modern, opts("server", nil)), Client(Modern, pool, "127.0.0.1"), "certificate", 0},
		{"client without ALPN", Modern, MeshServer(Modern, opts("server", nil)),
			WithClientCertificate(Client(Modern, pool, "127.0.0.1"), *cert), "convoy-mesh/1", 0},
		{"TLS 1.2 client", Modern, MeshServer(Modern, opts("server", nil)),
			func() *tls.Config {
				c := MeshClient(Modern, "127.0.0.1", opts("client", nil))
				c.MaxVersion = tls.VersionTLS12
				return c
			}(), "version", 0},
		{"server refuses the identity", Modern, MeshServer(Modern, opts("server", errors.New("not a host of this job"))),
			MeshClient(Modern, "127.0.0.1", opts("client", nil)), "not a host of this job", 0},
		{"client refuses the identity", Modern, MeshServer(Modern, opts("server", nil)),
			MeshClient(Modern, "127.0.0.1", opts("client", errors.New("not the host dialed"))), "not the host dialed", 0},
		{"wrong address", Modern, MeshServer(Modern, opts("server", nil)), MeshClient(Modern, "127.0.0.2", opts("client", nil)), "127.0.0.2", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			verified = nil
			st, err := meshHandshake(t, tc.server, tc.client)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != MeshALPN || st.CurveID != tc.group {
					t.Fatalf("negotiated %s %q %s", tls.VersionName(st.Version), st.NegotiatedProtocol, st.CurveID)
				}
				if len(verified) != 2 {
					t.Fatalf("verified by %v, want both ends", verified)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want a refusal mentioning %q", err, tc.wantErr)
			}
		})
	}
	if s := MeshServer(Modern, opts("server", nil)); !s.SessionTicketsDisabled || s.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Fatal("mesh server: session tickets on or client certificates optional")
	}
}

// meshHandshake is handshake with errors from both ends, and a read so
// that a TLS 1.3 client learns the server's verdict on its certificate.
func meshHandshake(t *testing.T, server, client *tls.Config) (tls.ConnectionState, error) {
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
		tc := tls.Server(c, server)
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1})
		}
		serverErr <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err == nil {
		defer c.Close()
		_, err = c.Read(make([]byte, 1))
	}
	serr := <-serverErr
	if err != nil || serr != nil {
		return tls.ConnectionState{}, errors.Join(err, serr)
	}
	return c.ConnectionState(), nil
}
