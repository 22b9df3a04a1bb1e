package e2e

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// readAll reads what the server sends before it closes (or 10 s pass).
func readAll(t *testing.T, c net.Conn) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, _ := io.ReadAll(c)
	return b
}

// Garbage, plaintext HTTP, an old TLS hello and an oversized header are each
// refused cleanly while the server keeps serving everyone else, and no
// plaintext byte ever comes back.
func TestBadInputRefusedServerKeepsServing(t *testing.T) {
	c := harness.Start(t, harness.Options{Args: []string{"--tls-profile", "compat"}})
	client := c.HTTPClient(t, tlsconf.Modern)

	// Good traffic runs the whole time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var goodErrs, goodOK int
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := client.Get(c.Endpoint + "/healthz")
			mu.Lock()
			if err != nil || resp.StatusCode != 200 {
				goodErrs++
			} else {
				goodOK++
			}
			mu.Unlock()
			if resp != nil {
				resp.Body.Close()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	dial := func() net.Conn {
		conn, err := net.Dial("tcp", c.Addr)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}

	t.Run("garbage", func(t *testing.T) {
		conn := dial()
		defer conn.Close()
		conn.Write(bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0xff}, 2000))
		if got := readAll(t, conn); len(got) != 0 {
			t.Fatalf("garbage got %d bytes back: %q", len(got), got[:min(len(got), 80)])
		}
	})
	t.Run("plaintext HTTP", func(t *testing.T) {
		conn := dial()
		defer conn.Close()
		conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"))
		if got := readAll(t, conn); len(got) != 0 {
			t.Fatalf("plaintext request got a plaintext answer: %q", got)
		}
	})
	t.Run("TLS 1.0 ClientHello", func(t *testing.T) {
		for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
			cfg := tlsconf.Probe("127.0.0.1", v, v, nil, nil)
			conn, err := tls.Dial("tcp", c.Addr, cfg)
			if err == nil {
				conn.Close()
				t.Fatalf("%s handshake succeeded", tls.VersionName(v))
			}
			if !strings.Contains(err.Error(), "protocol version") {
				t.Errorf("%s refused with %v, want a protocol_version alert", tls.VersionName(v), err)
			}
		}
	})
	t.Run("10 MB header", func(t *testing.T) {
		conn, err := tls.Dial("tcp", c.Addr, tlsconf.Client(tlsconf.Compat, c.CAPool(t), "127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		go func() {
			conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: "))
			chunk := bytes.Repeat([]byte("a"), 64<<10)
			for i := 0; i < 160; i++ {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
			}
			conn.Write([]byte("\r\n\r\n"))
		}()
		got := string(readAll(t, conn))
		if got != "" && !strings.HasPrefix(got, "HTTP/1.1 431") {
			t.Fatalf("oversized header answered %q", got[:min(len(got), 80)])
		}
	})
	t.Run("half handshake then silence", func(t *testing.T) {
		conn := dial()
		defer conn.Close()
		conn.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x50}) // record header, no body
		time.Sleep(100 * time.Millisecond)
	})

	// The server is alive and serving after all of it.
	close(stop)
	wg.Wait()
	resp, err := client.Get(c.Endpoint + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("server stopped serving: %v", err)
	}
	resp.Body.Close()
	if goodErrs > 0 || goodOK == 0 {
		t.Fatalf("good requests during the attack: %d ok, %d failed", goodOK, goodErrs)
	}
	if c.Exited() {
		t.Fatal("convoy exited")
	}
	if strings.Contains(c.Logs(), "panic") {
		t.Fatalf("convoy panicked:\n%s", c.Logs())
	}
	// The refusals are counted.
	m, err := client.Get(c.Endpoint + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(m.Body)
	m.Body.Close()
	if !strings.Contains(string(body), "convoy_tls_handshake_failures_total") || strings.Contains(string(body), "convoy_tls_handshake_failures_total 0\n") {
		t.Errorf("handshake failures not counted in /metrics")
	}
}
