package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"

	"convoy/bench/procstat"
)

// bareServerEnv, when set to the path of a PEM file holding a private key and
// its certificate chain, turns the test binary into the bare server (see
// TestMain).
const bareServerEnv = "CONVOY_BENCH_BARE_SERVER"

// handshakeTimeout mirrors convoy's ReadHeaderTimeout, which also bounds its
// TLS handshakes.
const handshakeTimeout = 15 * time.Second

// runBareServer is the baseline: crypto/tls and nothing else. It serves the
// certificate in pemPath with tlsconf.Modern, exactly as convoy does, and
// treats each connection as convoy's HTTP server does when no request comes:
// handshake, wait for a request until the peer goes away, close (sending
// close_notify). It prints
// its address on stdout, answers "stats" on stdin with its counters, and exits
// when stdin is closed.
func runBareServer(pemPath string) error {
	cert, err := tls.LoadX509KeyPair(pemPath, pemPath)
	if err != nil {
		return err
	}
	cfg := tlsconf.Server(tlsconf.Modern, func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return &cert, nil
	}, tlsconf.ServerOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var ok, failed atomic.Int64
	fmt.Printf("listening %s\n", ln.Addr())
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "stats" {
				fmt.Printf("handshakes=%d failures=%d\n", ok.Load(), failed.Load())
			}
		}
		os.Exit(0) // the parent is gone or done with us
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(5 * time.Millisecond) // as net/http does
				continue
			}
			return err
		}
		go func() {
			tc := tls.Server(c, cfg)
			// Close the TLS connection, not the socket: like net/http (and
			// any crypto/tls server) it answers the client's close_notify.
			defer tc.Close()
			tc.SetDeadline(time.Now().Add(handshakeTimeout))
			if err := tc.HandshakeContext(context.Background()); err != nil {
				failed.Add(1)
				return
			}
			ok.Add(1)
			var b [1]byte
			tc.Read(b[:]) // "wait for a request": returns when the client closes
		}()
	}
}

// server is one TLS endpoint under test, running in its own process.
type server struct {
	name string // "convoy" or "bare-go"
	addr string
	pid  int // 0 when unknown: no server CPU figures then
	// full has no session cache; resumed has one, primed with a ticket.
	full, resumed *tls.Config
	// failures returns the server's count of failed handshakes.
	failures func() (int64, error)
}

// setup starts convoy (harness.Start, default modern profile on
// 127.0.0.1:0) and the bare server on convoy's own certificate, and checks
// that both negotiate the same thing: TLS 1.3, X25519MLKEM768, the same
// certificate chain.
func setup(tb testing.TB) []*server {
	tb.Helper()
	c := harness.Start(tb, harness.Options{})
	pool := c.CAPool(tb)
	host, _, err := net.SplitHostPort(c.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	metricsClient := c.HTTPClient(tb, tlsconf.Modern)
	conv := &server{name: "convoy", addr: c.Addr, pid: childPID(c.DataDir)}
	conv.failures = func() (int64, error) {
		return scrapeCounter(metricsClient.Get, c.Endpoint+"/metrics", "convoy_tls_handshake_failures_total")
	}
	bare := startBare(tb, filepath.Join(c.DataDir, "pki", "server.pem"))
	servers := []*server{conv, bare}

	var chains [][]byte
	for _, s := range servers {
		s.full = tlsconf.Client(tlsconf.Modern, pool, host)
		s.resumed = tlsconf.WithSessionCache(s.full, 16) // one cache per server: the cache key is ServerName
		cs, err := s.handshake(context.Background(), s.full)
		if err != nil {
			tb.Fatalf("%s: %v", s.name, err)
		}
		if cs.Version != tls.VersionTLS13 || cs.CurveID != tls.X25519MLKEM768 || cs.DidResume {
			tb.Fatalf("%s negotiated %s with %s (resumed %v); want TLS 1.3 with X25519MLKEM768",
				s.name, tls.VersionName(cs.Version), cs.CurveID, cs.DidResume)
		}
		tb.Logf("%s at %s: %s, %s, %s, %d certificates, %s leaf", s.name, s.addr, tls.VersionName(cs.Version),
			cs.CurveID, tls.CipherSuiteName(cs.CipherSuite), len(cs.PeerCertificates), cs.PeerCertificates[0].PublicKeyAlgorithm)
		var chain []byte
		for _, cert := range cs.PeerCertificates {
			chain = append(chain, cert.Raw...)
		}
		chains = append(chains, chain)
		if err := s.prime(); err != nil {
			tb.Fatalf("%s: %v", s.name, err)
		}
	}
	if !bytes.Equal(chains[0], chains[1]) {
		tb.Fatal("convoy and the bare server serve different certificate chains")
	}
	if conv.pid == 0 {
		tb.Logf("convoy's process not found under /proc: no server CPU figures for it")
	}
	return servers
}

// startBare re-executes the test binary as the bare server.
func startBare(tb testing.TB, pemPath string) *server {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), bareServerEnv+"="+pemPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdoutPipe, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	stdout := bufio.NewReader(stdoutPipe)
	line, err := stdout.ReadString('\n')
	addr, found := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !found {
		tb.Fatalf("bare server did not start (%v): %q\n%s", err, line, stderr.String())
	}
	var mu sync.Mutex
	return &server{
		name: "bare-go",
		addr: addr,
		pid:  cmd.Process.Pid,
		failures: func() (int64, error) {
			mu.Lock()
			defer mu.Unlock()
			if _, err := io.WriteString(stdin, "stats\n"); err != nil {
				return 0, err
			}
			line, err := stdout.ReadString('\n')
			if err != nil {
				return 0, err
			}
			var ok, failed int64
			if _, err := fmt.Sscanf(line, "handshakes=%d failures=%d", &ok, &failed); err != nil {
				return 0, fmt.Errorf("bare server stats %q: %w", line, err)
			}
			return failed, nil
		},
	}
}

// handshake opens a TCP connection, completes a TLS handshake with cfg and
// closes the connection.
func (s *server) handshake(ctx context.Context, cfg *tls.Config) (tls.ConnectionState, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: handshakeTimeout}, Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	cs := conn.(*tls.Conn).ConnectionState()
	conn.Close()
	return cs, nil
}

// prime puts a session ticket in s.resumed's cache and checks that it is used.
// A Go client only processes the NewSessionTicket message (sent by the server
// with its Finished) when it reads, so read briefly: neither server sends
// anything else, the read ends at its deadline.
func (s *server) prime() error {
	for range 3 {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: handshakeTimeout}, "tcp", s.addr, s.resumed)
		if err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		var b [1]byte
		conn.Read(b[:])
		conn.Close()
		cs, err := s.handshake(context.Background(), s.resumed)
		if err != nil {
			return err
		}
		if cs.DidResume {
			return nil
		}
	}
	return errors.New("TLS session resumption did not happen after priming the session cache")
}

// mode is a kind of handshake.
type mode struct {
	name   string // "full" or "resumed"
	resume bool
}

var modes = []mode{{"full", false}, {"resumed", true}}

func (s *server) config(m mode) *tls.Config {
	if m.resume {
		return s.resumed
	}
	return s.full
}

// workers is the number of client goroutines. With two of them per core the
// client always has a handshake in flight while the server works on another.
const workers = 4

// load is the outcome of a burst of handshakes.
type load struct {
	handshakes int64
	elapsed    time.Duration
	serverCPU  time.Duration // -1 when unknown
	clientCPU  time.Duration
	// otherCPU is what the rest of the machine (other processes, the
	// kernel on their behalf) used meanwhile: busy time from /proc/stat
	// less client and server. -1 when unknown. The machine is shared, so
	// this is the noise to read the figures against.
	otherCPU time.Duration
	errs     int64
	wrong    int64 // handshakes that (did not) resume or used another group
	firstErr error
}

func (l load) rate() float64 { return float64(l.handshakes) / l.elapsed.Seconds() }

// run makes handshakes against s with workers goroutines: n of them if n > 0,
// otherwise as many as fit in d.
func (s *server) run(m mode, n int64, d time.Duration) load {
	cfg := s.config(m)
	ctx := context.Background()
	var next, done, errs, wrong atomic.Int64
	var firstErr atomic.Pointer[error]
	deadline := time.Now().Add(d)
	cpu0, ok0 := procstat.ProcCPU(s.pid)
	self0 := procstat.SelfCPU()
	busy0, okBusy0 := procstat.MachineBusy()
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				if n > 0 {
					if next.Add(1) > n {
						return
					}
				} else if !time.Now().Before(deadline) {
					return
				}
				cs, err := s.handshake(ctx, cfg)
				switch {
				case err != nil:
					errs.Add(1)
					firstErr.CompareAndSwap(nil, &err)
				case cs.DidResume != m.resume || cs.CurveID != tls.X25519MLKEM768:
					wrong.Add(1)
				default:
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	l := load{
		handshakes: done.Load(),
		elapsed:    time.Since(start),
		clientCPU:  procstat.SelfCPU() - self0,
		serverCPU:  -1,
		otherCPU:   -1,
		errs:       errs.Load(),
		wrong:      wrong.Load(),
	}
	busy1, okBusy1 := procstat.MachineBusy()
	if cpu1, ok1 := procstat.ProcCPU(s.pid); ok0 && ok1 {
		l.serverCPU = cpu1 - cpu0
		if okBusy0 && okBusy1 {
			l.otherCPU = max(busy1-busy0-l.serverCPU-l.clientCPU, 0)
		}
	}
	if p := firstErr.Load(); p != nil {
		l.firstErr = *p
	}
	return l
}

// check fails tb when a burst had errors or handshakes of the wrong kind.
func (l load) check(tb testing.TB, s *server, m mode) {
	tb.Helper()
	if l.errs > 0 {
		tb.Fatalf("%s/%s: %d handshakes failed; first: %v", m.name, s.name, l.errs, l.firstErr)
	}
	if l.wrong > 0 {
		if m.resume {
			tb.Fatalf("%s/%s: %d handshakes did not resume the TLS session (or did not use X25519MLKEM768)", m.name, s.name, l.wrong)
		}
		tb.Fatalf("%s/%s: %d handshakes resumed a session (or did not use X25519MLKEM768)", m.name, s.name, l.wrong)
	}
}

// otherShare is the fraction of the machine's CPUs that other processes used
// during l, or -1.
func (l load) otherShare() float64 {
	if l.otherCPU < 0 {
		return -1
	}
	return l.otherCPU.Seconds() / (l.elapsed.Seconds() * float64(runtime.NumCPU()))
}

// childPID finds the convoy process the harness started for dataDir: a child
// of this process whose command line has `--data dataDir`. The harness does
// not expose its PID.
func childPID(dataDir string) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	me := strconv.Itoa(os.Getpid())
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		if f := procstat.StatFields(stat); len(f) < 2 || f[1] != me {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if i := slices.Index(args, "--data"); i >= 0 && i+1 < len(args) && args[i+1] == dataDir {
			return pid
		}
	}
	return 0
}

// scrapeCounter reads one unlabelled counter from a Prometheus text page.
func scrapeCounter(get func(string) (*http.Response, error), url, name string) (int64, error) {
	resp, err := get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), name+" ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return int64(f), err
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s not found at %s", name, url)
}
