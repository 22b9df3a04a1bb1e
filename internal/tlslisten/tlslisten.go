// Package tlslisten is the listener of convoy's HTTPS endpoints (the API
// and the edge core's metrics): it wraps every accepted connection in TLS,
// writes no byte to a peer whose first byte is not a TLS handshake record,
// and bounds how many connections are open at once without letting
// unauthenticated peers hold the bound.
//
// crypto/tls's own tls.NewListener would let net/http answer a plaintext
// request with its courtesy "Client sent an HTTP request to an HTTPS
// server" in plaintext; convoy writes no plaintext byte to a network, ever.
//
// A connection limit is a denial-of-service target of its own: slots are
// taken before TLS, so anyone who can connect could hold them all with
// silent sockets, or with idle keep-alive connections after one unsigned
// GET /healthz. So one source address may hold at most PerIP slots, and
// while Accept waits for a slot it sheds what holds one without use:
// connections that sent no byte within SilentAfter, and (through Shed, an
// HTTPShedder) idle keep-alive connections and connections that sent no
// request within NewGrace.
package tlslisten

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Timings of shedding.
const (
	// SilentAfter is how long a connection may send nothing before a
	// waiting Accept closes it: a TLS client sends its hello at once.
	SilentAfter = time.Second
	// shedEvery is how often a waiting Accept sheds again.
	shedEvery = 250 * time.Millisecond
)

// Limit bounds the connections open at once over the listeners that share
// it. With every slot taken, Accept waits (shedding, see the package doc)
// before it takes the next connection from the kernel, so extra clients
// queue in the listen backlog instead of each costing a goroutine and a
// handshake.
type Limit struct {
	sem chan struct{}
	// PerIP bounds the slots one source address may hold; 0 is no bound.
	// A connection beyond it is closed at once, without a byte written.
	PerIP int
	// Waited, if set, is called when Accept finds every slot taken,
	// before it waits.
	Waited func()
	// Open, if set, is called with +1 and -1 as connections open and
	// close.
	Open func(delta float64)
	// Refused, if set, is called for a connection closed for PerIP.
	Refused func()
	// Shed, if set, is called while Accept waits for a slot, to close
	// connections that hold one without use (HTTPShedder.Shed).
	Shed func()

	mu    sync.Mutex
	conns map[*guard]struct{}
	perIP map[netip.Addr]int
}

// NewLimit returns a limit of max connections.
func NewLimit(max int) *Limit {
	return &Limit{sem: make(chan struct{}, max), conns: map[*guard]struct{}{}, perIP: map[netip.Addr]int{}}
}

// acquire takes a slot for the next connection, shedding while it waits.
func (l *Limit) acquire() {
	select {
	case l.sem <- struct{}{}:
		return
	default:
	}
	if l.Waited != nil {
		l.Waited()
	}
	t := time.NewTicker(shedEvery)
	defer t.Stop()
	for {
		l.shed()
		select {
		case l.sem <- struct{}{}:
			return
		case <-t.C:
		}
	}
}

// shed closes the connections that sent nothing for SilentAfter, and asks
// Shed for more.
func (l *Limit) shed() {
	now := time.Now()
	var silent []*guard
	l.mu.Lock()
	for g := range l.conns {
		if !g.gotBytes.Load() && now.Sub(g.created) > SilentAfter {
			silent = append(silent, g)
		}
	}
	l.mu.Unlock()
	for _, g := range silent {
		g.Close()
	}
	if l.Shed != nil {
		l.Shed()
	}
}

// admit registers g, or reports false when its address holds PerIP slots.
func (l *Limit) admit(g *guard) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.PerIP > 0 && l.perIP[g.ip] >= l.PerIP {
		return false
	}
	l.perIP[g.ip]++
	l.conns[g] = struct{}{}
	return true
}

// release frees the slot of an admitted connection.
func (l *Limit) release(g *guard) {
	l.mu.Lock()
	delete(l.conns, g)
	if l.perIP[g.ip]--; l.perIP[g.ip] <= 0 {
		delete(l.perIP, g.ip)
	}
	l.mu.Unlock()
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
	for {
		l.lim.acquire()
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.lim.sem // the slot taken for it, never opened
			return nil, err
		}
		g := &guard{Conn: c, lim: l.lim, created: time.Now()}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			g.ip = ap.Addr().Unmap()
		}
		if !l.lim.admit(g) {
			c.Close()
			<-l.lim.sem
			if l.lim.Refused != nil {
				l.lim.Refused()
			}
			continue
		}
		if l.lim.Open != nil {
			l.lim.Open(1)
		}
		return tls.Server(g, l.cfg), nil
	}
}

const recordTypeHandshake = 0x16

// ErrNotTLS is what a write to a peer that did not start a TLS handshake
// returns.
var ErrNotTLS = errors.New("peer did not start a TLS handshake; nothing is written to it")

// guard refuses every write on a connection whose first byte is not a TLS
// handshake record, notes whether the peer has sent anything, and frees
// the connection's slot at its first Close.
type guard struct {
	net.Conn
	lim      *Limit
	ip       netip.Addr
	created  time.Time
	gotBytes atomic.Bool
	checked  bool // only the reading goroutine touches it
	notTLS   atomic.Bool
	closed   sync.Once
}

func (g *guard) Read(b []byte) (int, error) {
	n, err := g.Conn.Read(b)
	if !g.checked && n > 0 {
		g.checked = true
		g.gotBytes.Store(true)
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
	g.closed.Do(func() { g.lim.release(g) })
	return err
}

// HTTPShedder follows an http.Server's connections (set the server's
// ConnState to its ConnState) and, as a Limit's Shed, closes those that
// hold a slot without use: idle keep-alive connections, and new ones
// that sent no request within NewGrace (a TLS handshake and nothing
// more). Clients open a new connection for their next request.
type HTTPShedder struct {
	NewGrace time.Duration
	mu       sync.Mutex
	conns    map[net.Conn]httpConn
}

type httpConn struct {
	state http.ConnState
	since time.Time
}

// ConnState records a connection's state; use it as http.Server.ConnState.
func (h *HTTPShedder) ConnState(c net.Conn, s http.ConnState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conns == nil {
		h.conns = map[net.Conn]httpConn{}
	}
	switch s {
	case http.StateNew, http.StateIdle:
		h.conns[c] = httpConn{s, time.Now()}
	default:
		delete(h.conns, c)
	}
}

// Shed closes the idle connections, and the new ones older than NewGrace.
func (h *HTTPShedder) Shed() {
	now := time.Now()
	var shed []net.Conn
	h.mu.Lock()
	for c, s := range h.conns {
		if s.state == http.StateIdle || now.Sub(s.since) > h.NewGrace {
			shed = append(shed, c)
			delete(h.conns, c)
		}
	}
	h.mu.Unlock()
	for _, c := range shed {
		c.Close()
	}
}
