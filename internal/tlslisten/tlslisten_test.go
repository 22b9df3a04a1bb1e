package tlslisten

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// A peer that speaks plaintext gets no byte back, and its slot is free
// again once the server closes it; a TLS peer is served; Open counts both.
// (internal/server's tests drive the same listener through the API
// server, with its metrics and the wait at the limit.)
func TestPlaintextGetsNothing(t *testing.T) {
	ca, err := pki.NewEphemeralCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(pki.LeafRequest{CommonName: "localhost", Names: []string{"127.0.0.1"}, Purpose: pki.ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconf.Server(tlsconf.Modern, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf, nil }, tlsconf.ServerOptions{NextProtos: []string{"x"}})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lim := NewLimit(1)
	var open atomic.Int64
	lim.Open = func(d float64) { open.Add(int64(d)) }
	ln := New(inner, cfg, lim)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					c.Write([]byte("HTTP/1.0 400 Bad Request\r\n\r\nplaintext reply")) // what net/http would do
					return
				}
				io.WriteString(c, "hello")
			}()
		}
	}()

	for range 3 { // one slot: each plaintext connection must give it back
		raw, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(raw, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(raw)
		raw.Close()
		if len(b) != 0 {
			t.Fatalf("plaintext peer got %q", b)
		}
	}
	roots := ca.Pool()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", inner.Addr().String(), tlsconf.Client(tlsconf.Modern, roots, "127.0.0.1"))
	if err != nil {
		t.Fatalf("TLS after three plaintext peers on one slot: %v", err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" {
		t.Errorf("TLS peer got %q", b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for open.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := open.Load(); n != 0 {
		t.Errorf("%d connections still counted open after all closed", n)
	}
}
