package server

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestSilentConnectionsStarveAPI: an unauthenticated peer that opens
// MaxConnections TCP connections and sends nothing holds every slot until
// ReadHeaderTimeout (15 s), reconnecting costs it ~MaxConnections/15
// connections a second; a peer that completes one cheap unsigned request
// (GET /healthz) per connection then holds its slot for IdleTimeout
// (2 min). Without shedding, a legitimate client would wait in the listen
// backlog meanwhile. Now it is served: a waiting Accept closes connections
// silent for a second (tlslisten).
func TestSilentConnectionsStarveAPI(t *testing.T) {
	const limit = 4
	addr, cfg, _ := serve(t, limit)
	for range limit {
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { raw.Close() })
	}
	time.Sleep(100 * time.Millisecond) // let convoy accept them
	c, err := handshake(addr, cfg, 3*time.Second)
	if err != nil {
		t.Fatalf("legitimate client not served while %d silent unauthenticated connections hold every slot: %v", limit, err)
	}
	defer c.Close()
	req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/healthz", nil)
	req.Write(c)
	if _, err := http.ReadResponse(bufio.NewReader(c), req); err != nil {
		t.Fatalf("healthz: %v", err)
	}
}

// TestIdleKeepAliveHoldsSlot: after one unsigned /healthz a
// keep-alive connection keeps its slot for IdleTimeout (2 min), so an
// unauthenticated peer needs only MaxConnections/120 new connections a
// second to hold them all. Now: when the limit is full, an
// idle keep-alive connection is closed to make room for a new one.
func TestIdleKeepAliveHoldsSlot(t *testing.T) {
	const limit = 2
	addr, cfg, _ := serve(t, limit)
	for range limit {
		c, err := handshake(addr, cfg, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/healthz", nil)
		req.Write(c)
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	c, err := handshake(addr, cfg, 3*time.Second)
	if err != nil {
		t.Fatalf("legitimate client not served while %d idle keep-alive connections (one unsigned /healthz each) hold every slot: %v", limit, err)
	}
	c.Close()
}
