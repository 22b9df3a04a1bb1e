package mesh

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"convoy/internal/tlsconf"
)

// Messages between the supervisor and an agent, one JSON object per line:
// the agent writes keyMessage then readyMessage on its standard output,
// the supervisor answers keyMessage with certMessage on the agent's
// standard input, which it then keeps open: its end of file tells the
// agent to stop (the supervisor stopped it, or died).
type (
	keyMessage struct {
		PublicKey []byte `json:"public_key"` // PKIX DER
	}
	certMessage struct {
		Chain [][]byte `json:"chain"` // DER: the host's certificate, then the job CA's
		Root  []byte   `json:"root"`  // DER: the job CA
	}
	readyMessage struct {
		Ready bool   `json:"ready"`
		Error string `json:"error,omitempty"`
	}
)

// Tuning of the agent.
const (
	poolSize         = 2                // handshaked tunnels kept ready per peer
	maxIdleTunnels   = 16               // ready tunnels kept per peer, reused ones included
	poolMaxIdle      = 30 * time.Second // a ready tunnel older than this is replaced
	serverIdleLimit  = 10 * time.Minute // a ready tunnel the dialer never used
	handshakeTimeout = 10 * time.Second
	dialTimeout      = 10 * time.Second
	portsInterval    = 50 * time.Millisecond
	countsInterval   = time.Second
	maxRetryDelay    = time.Second
)

// RunAgent is `convoy mesh-agent`: the inter-node encryption agent of one
// host of a distributed job. It runs in the host's network namespace
// (the supervisor starts it with nsenter), generates the host's key, which
// never leaves its memory, gets its certificate from the supervisor (see
// keyMessage), and then carries the host's TCP connections to its peers
// until its standard input ends or ctx is done. log receives its
// operational log; the job's owner reads what it writes to
// AgentConfig.JobLog.
func RunAgent(ctx context.Context, configPath string, stdin io.Reader, stdout io.Writer, log *slog.Logger) error {
	cfg, err := readConfig(configPath)
	if err != nil {
		return err
	}
	log = log.With("job", cfg.Job, "host", cfg.Host)
	a, err := newAgent(cfg, log)
	if err != nil {
		return err
	}
	defer a.jobLog.close()
	in := bufio.NewReader(stdin)
	enc := json.NewEncoder(stdout)
	if err := a.identify(in, enc); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.listen(); err != nil {
		enc.Encode(readyMessage{Error: err.Error()})
		return err
	}
	if err := enc.Encode(readyMessage{Ready: true}); err != nil {
		return fmt.Errorf("tell the supervisor: %w", err)
	}
	go func() {
		io.Copy(io.Discard, in) // the lifeline: returns when the supervisor closes it
		cancel()
	}()
	return a.run(ctx)
}

// agent is the state of RunAgent.
type agent struct {
	cfg    *AgentConfig
	log    *slog.Logger
	jobLog *jobLog
	key    *ecdsa.PrivateKey
	cert   *tls.Certificate
	roots  *x509.CertPool
	verify *verifier
	byAddr map[netip.Addr]string

	nftMu sync.Mutex
	nft   *nftables.Conn

	tunnelLn, redirLn *net.TCPListener
	pools             map[string]*pool
	ports             portWatch
	announced         sync.Map // host → true once its tunnel parameters were logged
	stats             stats
	wg                sync.WaitGroup
}

func newAgent(cfg *AgentConfig, log *slog.Logger) (*agent, error) {
	a := &agent{
		cfg: cfg, log: log,
		verify: &verifier{job: cfg.Job, self: cfg.Host, peers: cfg.Peers},
		byAddr: map[netip.Addr]string{},
		pools:  map[string]*pool{},
	}
	for h, addr := range cfg.Peers {
		a.byAddr[addr] = h
	}
	jl, err := openJobLog(cfg.JobLog)
	if err != nil {
		return nil, err
	}
	a.jobLog = jl
	if cfg.Profile == tlsconf.FIPS && !fips140.Enabled() {
		jl.close()
		return nil, errors.New("the fips profile needs Go's FIPS 140-3 module: run convoy with GODEBUG=fips140=on (or only)")
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	a.nft = c
	// Fail closed: without the rules, nothing would stop the container's
	// traffic from leaving in clear, so the agent refuses to run.
	if _, err := readCounts(c); err != nil {
		return nil, fmt.Errorf("the host's nftables table %s is not in place (%w); the supervisor installs it before starting the agent", tableName, err)
	}
	return a, nil
}

// identify generates the host's key and gets its certificate.
func (a *agent) identify(in *bufio.Reader, enc *json.Encoder) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := enc.Encode(keyMessage{PublicKey: pub}); err != nil {
		return fmt.Errorf("send public key: %w", err)
	}
	line, err := in.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("wait for the host certificate: %w", err)
	}
	var m certMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return fmt.Errorf("read the host certificate: %w", err)
	}
	root, err := x509.ParseCertificate(m.Root)
	if err != nil {
		return fmt.Errorf("parse the job CA: %w", err)
	}
	if len(m.Chain) == 0 {
		return errors.New("no host certificate")
	}
	leaf, err := x509.ParseCertificate(m.Chain[0])
	if err != nil {
		return fmt.Errorf("parse the host certificate: %w", err)
	}
	if pk, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pk.Equal(key.Public()) {
		return errors.New("the host certificate is not for this agent's key")
	}
	job, host, err := identityOf(leaf)
	if err != nil || job != a.cfg.Job || host != a.cfg.Host || !hasIP(leaf, a.cfg.Addr) {
		return fmt.Errorf("the host certificate names %s of %s (%v), not %s at %s of %s", host, job, err, a.cfg.Host, a.cfg.Addr, a.cfg.Job)
	}
	a.roots = x509.NewCertPool()
	a.roots.AddCert(root)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the host certificate does not verify against the job CA: %w", err)
	}
	a.key = key
	a.cert = &tls.Certificate{Certificate: m.Chain, PrivateKey: key, Leaf: leaf}
	return nil
}

// listen binds the agent's two ports, before any container of the job
// exists.
func (a *agent) listen() error {
	lc := net.ListenConfig{Control: markSocket(markAgent, false)}
	ln, err := lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(a.cfg.Addr, TunnelPort).String())
	if err != nil {
		return fmt.Errorf("listen for tunnels: %w", err)
	}
	a.tunnelLn = ln.(*net.TCPListener)
	ln, err = lc.Listen(context.Background(), "tcp4", netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), RedirectPort).String())
	if err != nil {
		a.tunnelLn.Close()
		return fmt.Errorf("listen for redirected connections: %w", err)
	}
	a.redirLn = ln.(*net.TCPListener)
	return nil
}

// markSocket sets a socket's mark and, for transparent, IP_TRANSPARENT (to
// bind a peer's address).
func markSocket(mark int, transparent bool) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			if err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, mark); err != nil {
				err = fmt.Errorf("SO_MARK: %w", err)
				return
			}
			if transparent {
				if err = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
					err = fmt.Errorf("IP_TRANSPARENT: %w", err)
				}
			}
		})
		if cerr != nil {
			return cerr
		}
		return err
	}
}

func (a *agent) run(ctx context.Context) error {
	a.announce()
	for _, h := range a.cfg.others() {
		p := &pool{a: a, host: h, addr: a.cfg.Peers[h], kick: make(chan struct{}, 1)}
		a.pools[h] = p
	}
	a.ports.init()
	a.spawn(func() { a.watchPorts(ctx) })
	countsDone := make(chan struct{})
	go func() {
		a.watchCounts(ctx)
		close(countsDone)
	}()
	for _, p := range a.pools {
		a.spawn(func() { p.run(ctx) })
		a.spawn(func() { a.subscribe(ctx, p.host) })
	}
	a.spawn(func() { a.acceptLoop(ctx, a.tunnelLn, a.handleTunnel) })
	a.spawn(func() { a.acceptLoop(ctx, a.redirLn, a.handleRedirected) })
	<-ctx.Done()
	a.tunnelLn.Close()
	a.redirLn.Close()
	<-countsDone // its last report
	st := &a.stats
	a.log.Info("mesh agent stopping", "connections_out", st.conns.Load(),
		"bytes_out", st.bytesOut.Load(), "records_out", st.recordsOut.Load(),
		"bytes_in", st.bytesIn.Load(), "records_in", st.recordsIn.Load())
	return nil
}

func (a *agent) spawn(f func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f()
	}()
}

func (a *agent) acceptLoop(ctx context.Context, ln *net.TCPListener, handle func(context.Context, *net.TCPConn)) {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				a.log.Error("accept", "listener", ln.Addr().String(), "err", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return
		}
		go handle(ctx, c)
	}
}

// handleRedirected carries one of the host's own connections to a peer.
func (a *agent) handleRedirected(ctx context.Context, c *net.TCPConn) {
	abortOnExit(c)
	dst, err := originalDst(c)
	if err != nil {
		// Not redirected by the rules: something dialed the port itself.
		a.log.Warn("refused a connection that was not redirected to a peer", "from", c.RemoteAddr().String(), "err", err)
		resetConn(c)
		return
	}
	host, ok := a.byAddr[dst.Addr()]
	if !ok || host == a.cfg.Host {
		a.log.Warn("refused a redirected connection to a non-peer", "to", dst.String())
		resetConn(c)
		return
	}
	t, err := a.pools[host].get(ctx)
	if err != nil {
		a.log.Warn("no tunnel to peer; connection reset", "peer", host, "to", dst.String(), "err", err)
		resetConn(c)
		return
	}
	var port [2]byte
	port[0], port[1] = byte(dst.Port()>>8), byte(dst.Port())
	if err := t.write(recOpen, port[:]); err != nil {
		t.close()
		a.log.Warn("tunnel failed on open; connection reset", "peer", host, "err", err)
		resetConn(c)
		return
	}
	a.stats.conns.Add(1)
	if err := relay(c, t); err != nil {
		a.log.Debug("connection to peer ended with an error", "peer", host, "port", dst.Port(), "err", err)
		return
	}
	a.pools[host].put(t)
}

// handleTunnel accepts a peer's tunnel.
func (a *agent) handleTunnel(ctx context.Context, raw *net.TCPConn) {
	remote := raw.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	var id peerIdentity
	cfg := tlsconf.MeshServer(a.cfg.Profile, tlsconf.MeshOptions{
		Certificate: a.cert, Roots: a.roots,
		Verify: func(cs tls.ConnectionState) error {
			var err error
			id, err = a.verify.server(cs, remote)
			return err
		},
	})
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	t, err := handshake(hctx, raw, cfg, false)
	cancel()
	if err != nil {
		a.log.Warn("refused a tunnel", "from", remote.String(), "err", err)
		raw.Close()
		return
	}
	t.peer, t.stats = id, &a.stats
	a.announcePeer(t)
	// The tunnel carries one connection after the other, as long as each
	// ends cleanly; the first record says what to do.
	for {
		raw.SetReadDeadline(time.Now().Add(serverIdleLimit))
		typ, p, err := t.recv.next()
		raw.SetReadDeadline(time.Time{})
		if err != nil {
			// A tunnel the peer retired unused ends here, without a record.
			if !errors.Is(err, errTruncated) {
				a.log.Warn("tunnel failed waiting for a connection", "peer", id.Host, "err", err)
			}
			t.close()
			return
		}
		switch typ {
		case recOpen:
			port, err := decodeOpen(p)
			if err == nil && (port == TunnelPort || port == RedirectPort) {
				err = fmt.Errorf("open record names the agent's own port %d", port)
			}
			if err != nil {
				a.protocolError(t, err)
				return
			}
			app, err := a.dialLocal(ctx, id.Addr, port)
			if err != nil {
				reason := resetAborted
				if errors.Is(err, syscall.ECONNREFUSED) {
					reason = resetRefused
				}
				a.log.Debug("peer's connection refused locally", "peer", id.Host, "port", port, "err", err)
				t.write(recReset, []byte{reason})
				t.close()
				return
			}
			if err := relay(app, t); err != nil {
				a.log.Debug("connection from peer ended with an error", "peer", id.Host, "port", port, "err", err)
				return
			}
		case recSubscribe:
			a.publish(ctx, t)
			return
		default:
			a.protocolError(t, fmt.Errorf("unexpected first record %s", typ))
			return
		}
	}
}

func (a *agent) protocolError(t *tunnel, err error) {
	a.log.Warn("tunnel protocol error", "peer", t.peer.Host, "err", err)
	t.write(recReset, []byte{resetProtocol})
	t.close()
}

// dialLocal connects to port of this host on behalf of peer: from the
// peer's own address, so that the application sees who connected, as it
// would without the mesh.
func (a *agent) dialLocal(ctx context.Context, peer netip.Addr, port uint16) (*net.TCPConn, error) {
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: peer.AsSlice()},
		Timeout:   dialTimeout,
		Control:   markSocket(markTransparent, true),
	}
	c, err := d.DialContext(ctx, "tcp4", netip.AddrPortFrom(a.cfg.Addr, port).String())
	if err != nil {
		return nil, err
	}
	abortOnExit(c.(*net.TCPConn))
	return c.(*net.TCPConn), nil
}

// abortOnExit makes the kernel reset an application's connection, not
// close it cleanly, if the agent dies with it open: the application must
// see an error, never an end of file its peer did not send. relay undoes
// it before a clean close.
func abortOnExit(c *net.TCPConn) { c.SetLinger(0) }

// dialTunnel opens and authenticates a new tunnel to host.
func (a *agent) dialTunnel(ctx context.Context, host string) (*tunnel, error) {
	addr := a.cfg.Peers[host]
	d := net.Dialer{Timeout: dialTimeout, Control: markSocket(markAgent, false)}
	raw, err := d.DialContext(ctx, "tcp4", netip.AddrPortFrom(addr, TunnelPort).String())
	if err != nil {
		return nil, err
	}
	cfg := tlsconf.MeshClient(a.cfg.Profile, addr.String(), tlsconf.MeshOptions{
		Certificate: a.cert, Roots: a.roots,
		Verify: func(cs tls.ConnectionState) error { return a.verify.client(cs, host) },
	})
	hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	t, err := handshake(hctx, raw, cfg, true)
	if err != nil {
		raw.Close()
		return nil, err
	}
	t.peer, t.stats = peerIdentity{Host: host, Addr: addr}, &a.stats
	a.announcePeer(t)
	return t, nil
}

// originalDst is where a redirected connection was headed (SO_ORIGINAL_DST).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		var mreq *unix.IPv6Mreq // 20 bytes, enough for a sockaddr_in
		mreq, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if serr != nil {
			return
		}
		b := mreq.Multiaddr // sockaddr_in: family (2), port (2, big endian), address (4)
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{b[4], b[5], b[6], b[7]}), uint16(b[2])<<8|uint16(b[3]))
	})
	if err == nil {
		err = serr
	}
	return ap, err
}

// resetConn closes c with a TCP reset, so that the application sees an
// error, not an end of file.
func resetConn(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}
