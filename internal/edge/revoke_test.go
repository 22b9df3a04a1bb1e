package edge

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// handshake runs a real TLS handshake of a device certificate against a
// broker configuration built as Run builds it, and returns the broker's
// verdict.
func handshake(t *testing.T, dir string, g *revocationGuard, p tlsconf.Profile, device tls.Certificate) error {
	t.Helper()
	brokerCA, err := loadCA(serverCADir(dir))
	if err != nil {
		t.Fatal(err)
	}
	serving, err := brokerCA.Issue(pki.LeafRequest{CommonName: "core", Names: []string{"127.0.0.1"}, Purpose: pki.ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	pool, _, err := deviceCAPool(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconf.Server(p, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serving, nil },
		tlsconf.ServerOptions{NextProtos: []string{"mqtt"}, ClientCAs: pool, VerifyConnection: g.verifyConnection})
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	clientCfg := tlsconf.WithClientCertificate(tlsconf.Client(p, brokerCA.Pool(), "127.0.0.1"), device)
	clientCfg.NextProtos = []string{"mqtt"}
	go func() {
		c := tls.Client(c2, clientCfg)
		c.Handshake()
		c.Read(make([]byte, 1)) // TLS 1.3: the server's verdict arrives after the client's Finished
		c.Close()
	}()
	c1.SetDeadline(time.Now().Add(10 * time.Second))
	return tls.Server(c1, cfg).Handshake()
}

func loadDevice(t *testing.T, out, name string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(filepath.Join(out, name+".crt"), filepath.Join(out, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRevocation(t *testing.T) {
	dir := t.TempDir()
	if err := Init(filepath.Join(dir, "edge"), Identity{Name: "core"}); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "edge")
	issue := func(name, out string) (tls.Certificate, DeviceFiles) {
		f, err := AddDevice(data, name, filepath.Join(dir, out), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return loadDevice(t, filepath.Join(dir, out), name), f
	}
	d1, f1 := issue("d1", "a")
	d2, _ := issue("d2", "a")
	// A certificate from before the register: issued by the device CA but
	// never recorded.
	devCA, err := loadCA(deviceCADir(data))
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := devCA.Issue(pki.LeafRequest{CommonName: "d1", Purpose: pki.ClientAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	legacyOther, err := devCA.Issue(pki.LeafRequest{CommonName: "d3", Purpose: pki.ClientAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Right CN, wrong CA.
	otherCA, err := pki.NewEphemeralCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := otherCA.Issue(pki.LeafRequest{CommonName: "d1", Purpose: pki.ClientAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	_, root, _ := deviceCAPool(data)
	g, err := newRevocationGuard(data, root, slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for what, c := range map[string]tls.Certificate{"d1": d1, "d2": d2, "d1 before the register": *legacy, "d3 before the register": *legacyOther} {
		if err := handshake(t, data, g, tlsconf.Modern, c); err != nil {
			t.Errorf("%s before any revocation: %v", what, err)
		}
	}
	if err := handshake(t, data, g, tlsconf.Modern, *forged); err == nil {
		t.Error("a certificate of another CA was accepted")
	}

	revoked, err := RevokeDevice(data, "d1", "stolen", time.Now())
	if err != nil || len(revoked) != 1 || revoked[0] != f1.Serial {
		t.Fatalf("revoke d1: %v, %v; want [%s]", revoked, err, f1.Serial)
	}
	if fi, err := os.Stat(registerPath(data)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("register: %v, %v", fi, err)
	}
	if g.check([][]*x509.Certificate{{d1.Leaf, devCA.Cert}}) != nil {
		t.Fatal("the guard saw the revocation before reloading")
	}
	if !g.reload() {
		t.Fatal("the guard did not notice the register changed")
	}
	if g.reload() {
		t.Fatal("the guard reloaded an unchanged register")
	}
	// Re-issued after the revoke; the guard has not polled since, and the
	// new certificate's not-before is backdated before the name's cut-off.
	_, f1b := issue("d1", "b")
	d1b := loadDevice(t, filepath.Join(dir, "b"), "d1")
	for _, p := range []tlsconf.Profile{tlsconf.Modern, tlsconf.Compat, tlsconf.FIPS} {
		for what, c := range map[string]tls.Certificate{"revoked d1": d1, "d1 before the register": *legacy} {
			if err := handshake(t, data, g, p, c); err == nil || !strings.Contains(err.Error(), errRevoked.Error()) {
				t.Errorf("%s, profile %s: handshake %v, want revoked", what, p, err)
			}
		}
		for what, c := range map[string]tls.Certificate{"d2": d2, "re-issued d1": d1b, "d3 before the register": *legacyOther} {
			if err := handshake(t, data, g, p, c); err != nil {
				t.Errorf("%s, profile %s: %v", what, p, err)
			}
		}
	}
	if n := strings.Count(logs.String(), "certificate revoked"); n != 2 {
		t.Errorf("refusals logged %d times, want once per certificate (2):\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "PRIVATE KEY") {
		t.Error("a key was logged")
	}

	reg, err := ListDevices(data)
	if err != nil {
		t.Fatal(err)
	}
	certs := reg.Certificates()
	if len(certs) != 3 || certs[0].Device != "d1" || certs[0].RevokedAt == nil || certs[0].Reason != "stolen" ||
		certs[1].Device != "d1" || certs[1].Serial != f1b.Serial || certs[1].RevokedAt != nil || certs[2].Device != "d2" || certs[2].RevokedAt != nil {
		t.Fatalf("register lists %+v", certs)
	}
	// A second revoke revokes the re-issued certificate and leaves the
	// first one's record as it was.
	revoked, err = RevokeDevice(data, "d1", "again", time.Now())
	if err != nil || len(revoked) != 1 || revoked[0] != f1b.Serial {
		t.Fatalf("second revoke: %v, %v", revoked, err)
	}
	if reg, _ := ListDevices(data); reg.Certificates()[0].Reason != "stolen" {
		t.Fatal("the second revoke rewrote the first one's record")
	}
	if _, err := RevokeDevice(data, "../d1", "", time.Now()); err == nil {
		t.Fatal("revoked an invalid device name")
	}
}

func TestRegisterDamagedKeepsPrevious(t *testing.T) {
	data := filepath.Join(t.TempDir(), "edge")
	if err := Init(data, Identity{Name: "core"}); err != nil {
		t.Fatal(err)
	}
	f, err := AddDevice(data, "d1", filepath.Join(data, "out"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RevokeDevice(data, "d1", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	_, root, _ := deviceCAPool(data)
	var logs bytes.Buffer
	g, err := newRevocationGuard(data, root, slog.New(slog.NewTextHandler(&syncWriter{w: &logs}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(registerPath(data), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(registerPath(data), time.Now().Add(time.Minute), time.Now().Add(time.Minute))
	g.reload()
	d1 := loadDevice(t, filepath.Join(data, "out"), "d1")
	if err := g.check([][]*x509.Certificate{{d1.Leaf, mustCA(t, data).Cert}}); !errors.Is(err, errRevoked) {
		t.Fatalf("after a damaged register, revoked %s: %v", f.Serial, err)
	}
	if !strings.Contains(logs.String(), "does not load") {
		t.Errorf("the damaged register was not logged:\n%s", logs.String())
	}
}

func mustCA(t *testing.T, data string) *pki.CA {
	t.Helper()
	ca, err := loadCA(deviceCADir(data))
	if err != nil {
		t.Fatal(err)
	}
	return ca
}
