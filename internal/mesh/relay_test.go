package mesh

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// relayed is an application connection carried by a tunnel: app1 talks
// to app2 through relay(…, client) and relay(…, server).
type relayed struct {
	app1, app2 *net.TCPConn
	errs       chan error // the two relays' results
}

func startRelays(t *testing.T, client, server *tunnel) *relayed {
	t.Helper()
	app1, agent1 := tcpPair(t)
	agent2, app2 := tcpPair(t)
	r := &relayed{app1: app1, app2: app2, errs: make(chan error, 2)}
	go func() { r.errs <- relay(agent1, client) }()
	go func() { r.errs <- relay(agent2, server) }()
	return r
}

func (r *relayed) results(t *testing.T) (error, error) {
	t.Helper()
	var out [2]error
	for i := range out {
		select {
		case out[i] = <-r.errs:
		case <-time.After(30 * time.Second):
			t.Fatal("relay did not end")
		}
	}
	return out[0], out[1]
}

// Data crosses both ways, each direction's end of file crosses as a
// half-close, and a tunnel whose connection ended cleanly carries the next.
func TestRelayHalfCloseAndReuse(t *testing.T) {
	job := newTestJob(t, "job-a", 2)
	client, server, cerr, serr := dialPair(t, job, "algo-1", job.peers["algo-1"], job.certs["algo-1"], job.roots(), "algo-2")
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	for i := range 3 {
		r := startRelays(t, client, server)
		up := make([]byte, 3<<20+i)
		rand.Read(up)
		go func() {
			r.app1.Write(up)
			r.app1.CloseWrite()
		}()
		got, err := io.ReadAll(r.app2) // ends with app1's half-close
		if err != nil || !bytes.Equal(got, up) {
			t.Fatalf("connection %d: %d bytes up, %v", i, len(got), err)
		}
		// The other direction still works after the half-close.
		down := []byte("reply after the half-close")
		r.app2.Write(down)
		r.app2.CloseWrite()
		got, err = io.ReadAll(r.app1)
		if err != nil || !bytes.Equal(got, down) {
			t.Fatalf("connection %d: reply %q, %v", i, got, err)
		}
		if e1, e2 := r.results(t); e1 != nil || e2 != nil {
			t.Fatalf("connection %d: relays ended with %v, %v", i, e1, e2)
		}
	}
}

// An application that resets its connection resets its peer's.
func TestRelayReset(t *testing.T) {
	job := newTestJob(t, "job-a", 2)
	client, server, _, _ := dialPair(t, job, "algo-1", job.peers["algo-1"], job.certs["algo-1"], job.roots(), "algo-2")
	r := startRelays(t, client, server)
	r.app1.Write([]byte("x"))
	r.app2.Read(make([]byte, 1))
	r.app1.SetLinger(0)
	r.app1.Close()
	r.app2.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := r.app2.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer of a reset connection read: %v, want ECONNRESET", err)
	}
	if e1, e2 := r.results(t); e1 == nil || e2 == nil {
		t.Fatalf("relays of a reset connection ended with %v, %v", e1, e2)
	}
}

// A tunnel cut without its closing records (its TCP connection closed
// under it) resets the applications' connections: neither sees an end of
// file.
func TestRelayTruncatedTunnel(t *testing.T) {
	job := newTestJob(t, "job-a", 2)
	client, server, _, _ := dialPair(t, job, "algo-1", job.peers["algo-1"], job.certs["algo-1"], job.roots(), "algo-2")
	r := startRelays(t, client, server)
	r.app1.Write([]byte("x"))
	r.app2.Read(make([]byte, 1))
	server.conn.Close() // as if the server's agent died
	for name, app := range map[string]*net.TCPConn{"app1": r.app1, "app2": r.app2} {
		app.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := app.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s read after the tunnel was cut: %v, want ECONNRESET", name, err)
		}
	}
	// The client's relay reads the cut stream; the server's had its own
	// connection closed under it.
	if e1, e2 := r.results(t); !errors.Is(e1, errTruncated) && !errors.Is(e2, errTruncated) {
		t.Fatalf("relays ended with %v and %v, want errTruncated from one", e1, e2)
	}
}
