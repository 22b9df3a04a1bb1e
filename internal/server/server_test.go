package server

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// serve starts a Server with limit on a loopback listener and returns its
// address, a client TLS config that trusts it, and the server.
func serve(t *testing.T, limit int) (string, *tls.Config, *Server) {
	t.Helper()
	ca, err := pki.NewEphemeralCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafRequest{CommonName: "localhost", Names: []string{"127.0.0.1"}, Purpose: pki.ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf, nil }
	s := New(Config{
		TLS:            tlsconf.Server(tlsconf.Modern, getCert, tlsconf.ServerOptions{}),
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		Registry:       prometheus.NewRegistry(),
		MaxConnections: limit,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.http.Close() })
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	return ln.Addr().String(), tlsconf.Client(tlsconf.Modern, roots, "127.0.0.1"), s
}

// handshake dials addr and completes a TLS handshake within d.
func handshake(addr string, cfg *tls.Config, d time.Duration) (*tls.Conn, error) {
	raw, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Now().Add(d))
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return c, nil
}

// TestConnectionLimit: with the limit's connections open, the next one is
// not served (its handshake gets no answer) until one of them closes, and
// then it is. The gauges on /metrics follow.
func TestConnectionLimit(t *testing.T) {
	addr, cfg, s := serve(t, 2)
	var held []*tls.Conn
	for range 2 {
		c, err := handshake(addr, cfg, 10*time.Second)
		if err != nil {
			t.Fatalf("connection within the limit: %v", err)
		}
		held = append(held, c)
	}
	if got := testutil.ToFloat64(s.metrics.openConns); got != 2 {
		t.Errorf("convoy_http_open_connections = %v with 2 open, want 2", got)
	}

	// The third connects (the kernel's backlog takes it) but convoy does
	// not accept it, so no ServerHello comes back.
	if c, err := handshake(addr, cfg, 700*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("a third connection was served with the limit at 2")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("third connection: want a handshake timeout, got %v", err)
	}
	if got := testutil.ToFloat64(s.metrics.connsWaited); got < 1 {
		t.Errorf("convoy_http_connections_waited_total = %v, want >= 1", got)
	}

	// Closing one frees its slot: a new connection is served, and answers.
	held[0].Close()
	c, err := handshake(addr, cfg, 10*time.Second)
	if err != nil {
		t.Fatalf("after closing one of the two: %v", err)
	}
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/healthz", nil)
	req.Write(c)
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatalf("healthz on the freed slot: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
	held[1].Close()
}

// TestPlaintextFreesItsSlot: a connection refused for speaking plaintext
// gives its slot back, so a plaintext flood cannot use up the limit.
func TestPlaintextFreesItsSlot(t *testing.T) {
	addr, cfg, s := serve(t, 1)
	for range 5 {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(raw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _ := raw.Read(make([]byte, 64))
		raw.Close()
		if n != 0 {
			t.Fatalf("plaintext request got %d bytes back", n)
		}
	}
	c, err := handshake(addr, cfg, 10*time.Second)
	if err != nil {
		t.Fatalf("TLS after 5 plaintext connections with a limit of 1: %v (open: %v)", err, testutil.ToFloat64(s.metrics.openConns))
	}
	c.Close()
}
