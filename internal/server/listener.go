package server

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// tlsListener wraps accepted connections in TLS. Unlike tls.NewListener it
// also silences net/http's courtesy reply to plaintext HTTP ("Client sent an
// HTTP request to an HTTPS server"): convoy writes no plaintext byte, ever.
//
// It also holds the server's connection limit: with slots full, Accept
// waits for a connection to close before it takes the next one from the
// kernel, so extra clients queue in the listen backlog (and then in their
// SYN retries) instead of each costing a goroutine, a TLS handshake and up
// to an HTTP/2 receive window of memory.
type tlsListener struct {
	net.Listener
	cfg   *tls.Config
	slots *connSlots
}

func (l *tlsListener) Accept() (net.Conn, error) {
	l.slots.acquire()
	c, err := l.Listener.Accept()
	if err != nil {
		l.slots.release()
		return nil, err
	}
	return tls.Server(&recordGuard{Conn: c, release: l.slots.release}, l.cfg), nil
}

// connSlots counts the open connections of all of a server's listeners
// against one limit.
type connSlots struct {
	sem     chan struct{}
	open    func(delta float64)
	waited  func()
	warn    func()
	warnMu  sync.Mutex
	warnOut time.Time
}

func (s *connSlots) acquire() {
	select {
	case s.sem <- struct{}{}:
	default:
		s.waited()
		s.warnMu.Lock()
		if now := time.Now(); now.Sub(s.warnOut) > time.Minute {
			s.warnOut = now
			s.warn()
		}
		s.warnMu.Unlock()
		s.sem <- struct{}{}
	}
	s.open(1)
}

func (s *connSlots) release() {
	<-s.sem
	s.open(-1)
}

const recordTypeHandshake = 0x16

var errNotTLS = errors.New("peer did not start a TLS handshake; nothing is written to it")

// recordGuard refuses every write on a connection whose first byte is not a
// TLS handshake record.
type recordGuard struct {
	net.Conn
	checked bool
	notTLS  atomic.Bool
	// release frees the connection's slot, once, at the first Close.
	release func()
	closed  sync.Once
}

func (g *recordGuard) Close() error {
	err := g.Conn.Close()
	g.closed.Do(g.release)
	return err
}

func (g *recordGuard) Read(b []byte) (int, error) {
	n, err := g.Conn.Read(b)
	if !g.checked && n > 0 {
		g.checked = true
		if b[0] != recordTypeHandshake {
			g.notTLS.Store(true)
		}
	}
	return n, err
}

func (g *recordGuard) Write(b []byte) (int, error) {
	if g.notTLS.Load() {
		g.Conn.Close()
		return 0, errNotTLS
	}
	return g.Conn.Write(b)
}
