package e2e

import (
	"crypto/tls"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

func servedSerial(t *testing.T, c *harness.Convoy) (*big.Int, time.Time) {
	t.Helper()
	conn, err := tls.Dial("tcp", c.Addr, tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1"))
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	return leaf.SerialNumber, leaf.NotAfter
}

// A leaf certificate close to expiry is replaced, and the new one is served
// by the same process, with no restart.
func TestLeafRenewedWithoutRestart(t *testing.T) {
	c := harness.Start(t, harness.Options{Args: []string{"--cert-lifetime", "6s"}})
	first, firstExpiry := servedSerial(t, c)
	deadline := time.Now().Add(45 * time.Second)
	for {
		serial, expiry := servedSerial(t, c)
		if serial.Cmp(first) != 0 {
			if !expiry.After(firstExpiry) {
				t.Fatalf("renewed certificate expires %s, not after the old one (%s)", expiry, firstExpiry)
			}
			break
		}
		if time.Now().After(firstExpiry) {
			t.Fatalf("certificate %s expired at %s and was not replaced", first.Text(16), firstExpiry)
		}
		if time.Now().After(deadline) {
			t.Fatal("no renewal")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if c.Exited() {
		t.Fatal("convoy restarted or exited during renewal")
	}
	if !strings.Contains(c.Logs(), "serving certificate issued") {
		t.Error("renewal was not logged")
	}
}

// kill -9 at any moment of start-up, first or later, never costs the CA or
// the credentials, and never leaves a data dir convoy cannot start on.
func TestCrashDuringStartupKeepsIdentity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	// Crashes during the very first start.
	for _, d := range []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond, 40 * time.Millisecond} {
		c := harness.Launch(t, harness.Options{DataDir: dir})
		time.Sleep(d)
		c.Kill()
	}
	c := harness.Start(t, harness.Options{DataDir: dir})
	ca, err := os.ReadFile(c.CABundle)
	if err != nil {
		t.Fatal(err)
	}
	akid, secret := c.Env["AWS_ACCESS_KEY_ID"], c.Env["AWS_SECRET_ACCESS_KEY"]
	if err := c.Stop(); err != nil {
		t.Fatalf("SIGTERM: convoy exited with %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "convoy.env")); !os.IsNotExist(err) {
		t.Error("convoy.env survived shutdown; a waiting client would think convoy is up")
	}
	// Crashes during later starts.
	for _, d := range []time.Duration{1 * time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond} {
		c := harness.Launch(t, harness.Options{DataDir: dir})
		time.Sleep(d)
		c.Kill()
	}
	c = harness.Start(t, harness.Options{DataDir: dir})
	ca2, _ := os.ReadFile(c.CABundle)
	if string(ca2) != string(ca) {
		t.Fatal("CA changed across crashes")
	}
	if c.Env["AWS_ACCESS_KEY_ID"] != akid || c.Env["AWS_SECRET_ACCESS_KEY"] != secret {
		t.Fatal("admin credentials changed across crashes")
	}
	// The CA still verifies what is served.
	servedSerial(t, c)
	for _, f := range []string{"convoy.env", "pki/ca-key.pem", "pki/server.pem", "keys/master.key", "convoy.db"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %o: secrets must be 0600", f, fi.Mode().Perm())
		}
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %o, want 700", fi.Mode().Perm())
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
}

// Two convoys cannot share a data directory.
func TestDataDirLocked(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	defer c.Stop()
	second := harness.Launch(t, harness.Options{DataDir: c.DataDir})
	err := second.Wait(30 * time.Second)
	if err == nil || !strings.Contains(second.Logs(), "in use by another convoy") {
		t.Fatalf("second convoy on the same data dir: %v\n%s", err, second.Logs())
	}
}

// --fips refuses to start without Go's FIPS 140-3 module, and with it
// serves the fips profile and names the FIPS endpoint.
func TestFIPSMode(t *testing.T) {
	refused := harness.Launch(t, harness.Options{Args: []string{"--fips"}, Env: []string{"GODEBUG=fips140=off"}})
	if err := refused.Wait(30 * time.Second); err == nil || !strings.Contains(refused.Logs(), "GODEBUG=fips140=on") {
		t.Fatalf("--fips without the module: %v\n%s", err, refused.Logs())
	}
	c := harness.Start(t, harness.Options{Args: []string{"--fips"}, Env: []string{"GODEBUG=fips140=on"}})
	if c.Env["CONVOY_FIPS_ENDPOINT"] == "" || c.Env["CONVOY_TLS_PROFILE"] != "fips" {
		t.Fatalf("convoy.env under --fips: %v", c.Env)
	}
	conn, err := tls.Dial("tcp", c.Addr, tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	st := conn.ConnectionState()
	conn.Close()
	if st.CurveID == tls.X25519MLKEM768 || st.CurveID == tls.X25519 {
		t.Fatalf("FIPS endpoint negotiated %s", st.CurveID)
	}
	if st.CipherSuite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		t.Fatal("FIPS endpoint negotiated ChaCha20")
	}
}
