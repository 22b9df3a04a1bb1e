package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// testsslFindings runs testssl.sh (protocols, suites, forward secrecy,
// vulnerabilities) against addr, fails the test on any finding of severity
// MEDIUM or above, and returns the findings by id.
func testsslFindings(t *testing.T, testssl string, c *harness.Convoy, addr string) map[string]string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "testssl.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testssl, "-p", "-s", "-f", "-U", "--add-ca", c.CABundle,
		"--jsonfile", out, "--quiet", "--color", "0", "--warnings", "off", addr)
	log, err := cmd.CombinedOutput()
	data, rerr := os.ReadFile(out)
	if rerr != nil {
		t.Fatalf("testssl wrote no JSON (%v, %v):\n%s", err, rerr, log)
	}
	var findings []struct{ ID, Severity, Finding string }
	if err := json.Unmarshal(data, &findings); err != nil {
		t.Fatalf("parse testssl JSON: %v", err)
	}
	byID := map[string]string{}
	for _, f := range findings {
		byID[f.ID] = f.Finding
		switch f.Severity {
		case "MEDIUM", "HIGH", "CRITICAL":
			t.Errorf("testssl %s finding %s: %s", f.Severity, f.ID, f.Finding)
		}
	}
	if len(findings) < 20 {
		t.Fatalf("testssl reported only %d items; did it reach convoy?\n%s", len(findings), log)
	}
	return byID
}

// testssl.sh, the tool auditors run, must find nothing of severity MEDIUM or
// above on any profile; sslscan must see no TLS < 1.2, no CBC and no suite
// without forward secrecy.
func TestTestsslFindsNothingOnAnyProfile(t *testing.T) {
	testssl := harness.Tool(t, "testssl")
	sslscan := harness.Tool(t, "sslscan")
	for _, p := range tlsconf.Profiles {
		t.Run(string(p), func(t *testing.T) {
			t.Parallel()
			c := harness.Start(t, harness.Options{Args: []string{"--tls-profile", string(p)}})
			byID := testsslFindings(t, testssl, c, c.Addr)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			for _, id := range []string{"TLS1", "TLS1_1", "SSLv2", "SSLv3"} {
				if !strings.HasPrefix(byID[id], "not offered") {
					t.Errorf("testssl %s: %q, want not offered", id, byID[id])
				}
			}
			if !strings.HasPrefix(byID["TLS1_3"], "offered") {
				t.Errorf("testssl TLS1_3: %q", byID["TLS1_3"])
			}
			if byID["PFS"] != "offered" || strings.Contains(byID["PFS_ciphers"], "CBC") {
				t.Errorf("testssl forward secrecy: %q, suites %q", byID["PFS"], byID["PFS_ciphers"])
			}

			scan, err := exec.CommandContext(ctx, sslscan, "--no-colour", "--xml=-", c.Addr).Output()
			if err != nil {
				t.Fatalf("sslscan: %v", err)
			}
			var doc struct {
				Protocols []struct {
					Type    string `xml:"type,attr"`
					Version string `xml:"version,attr"`
					Enabled string `xml:"enabled,attr"`
				} `xml:"ssltest>protocol"`
				Ciphers []struct {
					Version string `xml:"sslversion,attr"`
					Name    string `xml:"cipher,attr"`
				} `xml:"ssltest>cipher"`
			}
			if err := xml.Unmarshal(scan, &doc); err != nil {
				t.Fatalf("parse sslscan XML: %v", err)
			}
			if len(doc.Ciphers) == 0 {
				t.Fatalf("sslscan found no cipher:\n%s", scan)
			}
			for _, pr := range doc.Protocols {
				if pr.Enabled == "1" && (pr.Type == "ssl" || pr.Version == "1.0" || pr.Version == "1.1") {
					t.Errorf("sslscan: %s %s enabled", pr.Type, pr.Version)
				}
			}
			for _, ci := range doc.Ciphers {
				forwardSecret := ci.Version == "TLSv1.3" || strings.HasPrefix(ci.Name, "ECDHE-")
				if strings.Contains(ci.Name, "CBC") || strings.Contains(ci.Name, "SHA1") || !forwardSecret ||
					(ci.Version != "TLSv1.3" && ci.Version != "TLSv1.2") {
					t.Errorf("sslscan: weak suite accepted: %s %s", ci.Version, ci.Name)
				}
				if p == tlsconf.Modern && ci.Version != "TLSv1.3" {
					t.Errorf("modern profile accepted %s %s", ci.Version, ci.Name)
				}
				if p == tlsconf.FIPS && strings.Contains(ci.Name, "CHACHA") {
					t.Errorf("fips profile accepted %s %s", ci.Version, ci.Name)
				}
			}
		})
	}
}

// With the modern profile a Go client gets TLS 1.3 with the hybrid
// post-quantum key exchange, and `convoy tls check` reports it and passes.
func TestModernNegotiatesPostQuantum(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	conn, err := tls.Dial("tcp", c.Addr, tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	st := conn.ConnectionState()
	conn.Close()
	if st.Version != tls.VersionTLS13 || st.CurveID != tls.X25519MLKEM768 {
		t.Fatalf("negotiated %s with %s, want TLS 1.3 with X25519MLKEM768", tls.VersionName(st.Version), st.CurveID)
	}

	out, err := exec.Command(harness.Binary(t), "tls", "check", c.Addr, "--ca", c.CABundle).CombinedOutput()
	if err != nil {
		t.Fatalf("convoy tls check failed on convoy's own modern endpoint: %v\n%s", err, out)
	}
	for _, want := range []string{"TLS 1.3", "X25519MLKEM768 (post-quantum: yes)", "chain         verified", "PASS"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("tls check output lacks %q:\n%s", want, out)
		}
	}
	js, err := exec.Command(harness.Binary(t), "tls", "check", c.Addr, "--ca", c.CABundle, "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Version     string   `json:"version"`
		Group       string   `json:"key_exchange_group"`
		PostQuantum bool     `json:"post_quantum"`
		Findings    []string `json:"findings"`
		Chain       []struct {
			NotAfter time.Time `json:"not_after"`
		} `json:"certificate_chain"`
	}
	if err := json.Unmarshal(js, &rep); err != nil {
		t.Fatalf("tls check --json: %v\n%s", err, js)
	}
	if !rep.PostQuantum || rep.Group != "X25519MLKEM768" || len(rep.Findings) != 0 || len(rep.Chain) == 0 || rep.Chain[0].NotAfter.Before(time.Now()) {
		t.Fatalf("tls check --json: %+v", rep)
	}
}

// `convoy tls check` fails an endpoint weaker than the profile asked for, and
// one whose certificate it cannot verify.
func TestTLSCheckFailsWeakerEndpoint(t *testing.T) {
	c := harness.Start(t, harness.Options{Args: []string{"--tls-profile", "compat"}})
	out, err := exec.Command(harness.Binary(t), "tls", "check", c.Addr, "--ca", c.CABundle, "--profile", "compat").CombinedOutput()
	if err != nil {
		t.Fatalf("compat endpoint fails its own profile: %v\n%s", err, out)
	}
	out, err = exec.Command(harness.Binary(t), "tls", "check", c.Addr, "--ca", c.CABundle, "--profile", "modern").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "accepted TLS 1.2") {
		t.Fatalf("compat endpoint graded as modern: err %v\n%s", err, out)
	}
	// Without convoy's CA the chain does not verify.
	out, err = exec.Command(harness.Binary(t), "tls", "check", c.Addr, "--profile", "compat").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not verify") {
		t.Fatalf("unverifiable chain passed: err %v\n%s", err, out)
	}
}

// HTTP/2 and HTTP/1.1 are both served.
func TestHTTP2AndHTTP1(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	resp, err := c.HTTPClient(t, tlsconf.Modern).Get(c.Endpoint + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("got %s %d, want HTTP/2 200", resp.Proto, resp.StatusCode)
	}
	cfg := tlsconf.Client(tlsconf.Modern, c.CAPool(t), "127.0.0.1")
	cfg.NextProtos = []string{"http/1.1"}
	conn, err := tls.Dial("tcp", c.Addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, _ := conn.Read(buf)
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 200") {
		t.Fatalf("HTTP/1.1 answer %q", buf[:n])
	}
}
