// Package tlslisten is the listener of convoy's HTTPS endpoints (the API
// and the edge core's metrics): it wraps every accepted connection in TLS,
// writes no byte to a peer whose first byte is not a TLS handshake record,
// and bounds how many connections are open at once.
//
// crypto/tls's own tls.NewListener would let net/http answer a plaintext
// request with its courtesy "Client sent an HTTP request to an HTTPS
// server" in plaintext; convoy writes no plaintext byte to a network, ever.
package tlslisten

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
)

// Limit bounds the connections open at once over the listeners that share
// it. With every slot taken, Accept waits for a connection to close before
// it takes the next one from the kernel, so extra clients queue in the
// listen backlog instead of each costing a goroutine and a handshake.
type Limit struct {
	sem chan struct{}
	// Waited, if set, is called when Accept finds every slot taken,
	// before it waits.
	Waited func()
	// Open, if set, is called with +1 and -1 as connections open and
	// close.
	Open func(delta float64)
}

// NewLimit returns a limit of max connections.
func NewLimit(max int) *Limit { return &Limit{sem: make(chan struct{}, max)} }

// acquire takes a slot for the next connection, waiting for one if all
// are taken.
func (l *Limit) acquire() {
	select {
	case l.sem <- struct{}{}:
	default:
		if l.Waited != nil {
			l.Waited()
		}
		l.sem <- struct{}{}
	}
}

// opened counts a connection accepted into its slot.
func (l *Limit) opened() {
	if l.Open != nil {
		l.Open(1)
	}
}

// release frees the slot of a connection that was opened.
func (l *Limit) release() {
	<-l.sem
	if l.Open != nil {
		l.Open(-1)
	}
}

// New returns a listener that accepts on inner, within lim, and serves
// each connection over TLS with cfg (from internal/tlsconf).
func New(inner net.Listener, cfg *tls.Config, lim *Limit) net.Listener {
	return &listener{Listener: inner, cfg: cfg, lim: lim}
}

type listener struct {
	net.Listener
	cfg *tls.Config
	lim *Limit
}

func (l *listener) Accept() (net.Conn, error) {
	l.lim.acquire()
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.lim.sem // the slot taken for it, never opened
		return nil, err
	}
	l.lim.opened()
	return tls.Server(&guard{Conn: c, release: l.lim.release}, l.cfg), nil
}

const recordTypeHandshake = 0x16

// ErrNotTLS is what a write to a peer that did not start a TLS handshake
// returns.
var ErrNotTLS = errors.New("peer did not start a TLS handshake; nothing is written to it")

// guard refuses every write on a connection whose first byte is not a TLS
// handshake record, and frees the connection's slot at its first Close.
type guard struct {
	net.Conn
	checked bool // only the reading goroutine touches it
	notTLS  atomic.Bool
	release func()
	closed  sync.Once
}

func (g *guard) Read(b []byte) (int, error) {
	n, err := g.Conn.Read(b)
	if !g.checked && n > 0 {
		g.checked = true
		if b[0] != recordTypeHandshake {
			g.notTLS.Store(true)
		}
	}
	return n, err
}

func (g *guard) Write(b []byte) (int, error) {
	if g.notTLS.Load() {
		g.Conn.Close()
		return 0, ErrNotTLS
	}
	return g.Conn.Write(b)
}

func (g *guard) Close() error {
	err := g.Conn.Close()
	g.closed.Do(g.release)
	return err
}
