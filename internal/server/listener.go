package server

import (
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
)

// tlsListener wraps accepted connections in TLS. Unlike tls.NewListener it
// also silences net/http's courtesy reply to plaintext HTTP ("Client sent an
// HTTP request to an HTTPS server"): convoy writes no plaintext byte, ever.
type tlsListener struct {
	net.Listener
	cfg *tls.Config
}

func (l *tlsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return tls.Server(&recordGuard{Conn: c}, l.cfg), nil
}

const recordTypeHandshake = 0x16

var errNotTLS = errors.New("peer did not start a TLS handshake; nothing is written to it")

// recordGuard refuses every write on a connection whose first byte is not a
// TLS handshake record.
type recordGuard struct {
	net.Conn
	checked bool
	notTLS  atomic.Bool
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
