package mesh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"convoy/internal/mesh/meshtest"
	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// meshJob is a network whose hosts run real agents under real rules.
type meshJob struct {
	nw       *meshtest.Network
	job      *Job
	logDir   string
	failures chan *TunnelError
}

// startMesh sets up every host of nw (or the first n when given) as the
// executor would, before any container.
func startMesh(t *testing.T, nw *meshtest.Network, sup *Supervisor, n ...int) *meshJob {
	t.Helper()
	m := &meshJob{nw: nw, logDir: t.TempDir(), failures: make(chan *TunnelError, 8)}
	m.job = sup.NewJob(JobOptions{
		Lifetime:  time.Hour,
		JobLog:    func(host string) string { return filepath.Join(m.logDir, host+".log") },
		OnFailure: func(e *TunnelError) { m.failures <- e },
	})
	t.Cleanup(m.job.Close)
	hosts := len(nw.Hosts)
	if len(n) > 0 {
		hosts = n[0]
	}
	for i := range hosts {
		stop, err := m.job.HostSetup(context.Background(), nw.HostNet(i))
		if err != nil {
			t.Fatalf("host setup of %s: %v", nw.Hosts[i].Name, err)
		}
		t.Cleanup(stop)
	}
	return m
}

func (m *meshJob) jobLog(t *testing.T, host string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(m.logDir, host+".log"))
	return string(b)
}

// waitFor polls cond; the deadline only bounds a hung test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// server listens on port in host h and serves each connection with f. It
// records the remote addresses it saw.
type server struct {
	mu      sync.Mutex
	remotes []netip.Addr
	ln      net.Listener
}

func serve(t *testing.T, h *meshtest.Host, port int, f func(net.Conn)) *server {
	t.Helper()
	s := &server{}
	err := h.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ln.Close() })
	go func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.remotes = append(s.remotes, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
			s.mu.Unlock()
			go func() {
				defer c.Close()
				f(c)
			}()
		}
	}()
	return s
}

// dial connects from host h; it retries while the port is refused, the
// usual way to wait for a peer (and how long the peer's listening port
// takes to reach this host's rules).
func dial(t *testing.T, h *meshtest.Host, to string) net.Conn {
	t.Helper()
	var c net.Conn
	waitFor(t, "a connection to "+to, func() bool {
		err := h.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp4", to, 5*time.Second)
			return err
		})
		if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial %s: %v", to, err)
		}
		return err == nil
	})
	return c
}

func dialOnce(h *meshtest.Host, to string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", to, timeout)
		return err
	})
	return c, err
}

// Two hosts talk plain TCP; the mesh carries it, both ways, with its
// half-closes, and the accepting application sees the real peer address.
func TestMeshCarriesTCP(t *testing.T) {
	nw := meshtest.New(t, 2)
	m := startMesh(t, nw, testSupervisor(t))
	h1, h2 := nw.Hosts[0], nw.Hosts[1]

	// algo-2 hashes what it receives until end of file, then answers.
	srv := serve(t, h2, 7777, func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		fmt.Fprintf(c, "%d %x\n", n, h.Sum(nil))
	})
	c := dial(t, h1, netip.AddrPortFrom(h2.Addr, 7777).String())
	data := make([]byte, 16<<20+12345)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	reply, err := io.ReadAll(c)
	c.Close()
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if want := fmt.Sprintf("%d %x\n", len(data), sha256.Sum256(data)); string(reply) != want {
		t.Fatalf("reply %q, want %q", reply, want)
	}
	srv.mu.Lock()
	remote := srv.remotes[0]
	srv.mu.Unlock()
	if remote != h1.Addr {
		t.Fatalf("algo-2's application saw the connection come from %s, want algo-1's address %s", remote, h1.Addr)
	}

	// The other way, algo-2 dialing algo-1.
	serve(t, h1, 29500, func(c net.Conn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "echo %s", line)
	})
	c = dial(t, h2, netip.AddrPortFrom(h1.Addr, 29500).String())
	fmt.Fprintf(c, "ping\n")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "echo ping\n" {
		t.Fatalf("reverse: %q %v", line, err)
	}
	c.Close()

	// A port nobody listens on is refused, as it would be without the mesh.
	if _, err := dialOnce(h1, netip.AddrPortFrom(h2.Addr, 7778).String(), 5*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("closed port: %v, want connection refused", err)
	}

	for _, h := range nw.Hosts {
		log := m.jobLog(t, h.Name)
		for _, want := range []string{JobLogPrefix + "inter-node encryption is on for " + h.Name, "AES-256-GCM", "tunnel with algo-"} {
			if !strings.Contains(log, want) {
				t.Errorf("%s's job log lacks %q:\n%s", h.Name, want, log)
			}
		}
	}
	select {
	case f := <-m.failures:
		t.Fatalf("agent failure: %v", f)
	default:
	}
}

// UDP (and anything else but TCP) between hosts is dropped, counted, and
// said once in the job's log.
func TestMeshDropsUDP(t *testing.T) {
	nw := meshtest.New(t, 2)
	m := startMesh(t, nw, testSupervisor(t))
	h1, h2 := nw.Hosts[0], nw.Hosts[1]
	var pc net.PacketConn
	if err := h2.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", "0.0.0.0:7777")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	received := make(chan []byte, 16)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			received <- bytes.Clone(buf[:n])
		}
	}()
	const udpCanary = "convoy-udp-canary"
	var sendErr error
	h1.Do(func() error {
		c, err := net.Dial("udp4", netip.AddrPortFrom(h2.Addr, 7777).String())
		if err != nil {
			return err
		}
		defer c.Close()
		for range 5 {
			if _, err := c.Write([]byte(udpCanary)); err != nil {
				sendErr = err // EPERM: the drop is visible to the sender
			}
		}
		return nil
	})
	t.Logf("UDP send error seen by the application: %v", sendErr)
	waitFor(t, "the drop to be reported in algo-1's job log", func() bool {
		return strings.Contains(m.jobLog(t, "algo-1"), "inter-node encryption carries TCP only")
	})
	log := m.jobLog(t, "algo-1")
	if n := strings.Count(log, "carries TCP only"); n != 1 {
		t.Errorf("drop reported %d times, want once:\n%s", n, log)
	}
	if !strings.Contains(log, "UDP 5") {
		t.Errorf("job log does not count the 5 UDP packets:\n%s", log)
	}
	select {
	case b := <-received:
		t.Fatalf("algo-2 received a UDP datagram: %q", b)
	default:
	}
}

// A namespace on the job's bridge that is not a host of the job, even with
// a host's address, reaches nothing: not the applications' ports, and not
// the agents' tunnels without a certificate of this job.
func TestMeshRefusesIntruders(t *testing.T) {
	// Three hosts in the job, two running: the intruder takes the third
	// host's address, which the rules of the others expect to see.
	nw := meshtest.New(t, 3)
	m := startMesh(t, nw, testSupervisor(t), 2)
	m.job.Close() // algo-3 will never get its certificate
	h1, h2, h3 := nw.Hosts[0], nw.Hosts[1], nw.Hosts[2]
	served := make(chan struct{}, 16)
	serve(t, h2, 7777, func(c net.Conn) {
		served <- struct{}{}
		io.Copy(io.Discard, c)
	})
	// The port is open to the job's hosts.
	c := dial(t, h1, netip.AddrPortFrom(h2.Addr, 7777).String())
	c.Close()
	<-served

	intruders := map[string]*meshtest.Host{
		"spoofing algo-1's address": nw.Attach(t, h1.Addr),
		"with algo-3's address":     h3,
		"with an unused address":    nw.Attach(t, netip.AddrFrom4([4]byte{h1.Addr.As4()[0], h1.Addr.As4()[1], h1.Addr.As4()[2], 200})),
	}
	other, err := pki.NewEphemeralCA("another job's CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range intruders {
		t.Run(name, func(t *testing.T) {
			// The application's port: dropped on the way in.
			if c, err := dialOnce(in, netip.AddrPortFrom(h2.Addr, 7777).String(), 2*time.Second); err == nil {
				c.Close()
				t.Fatal("connected to algo-2's application")
			} else {
				t.Logf("application port: %v", err)
			}
			// The tunnel port, with a certificate of another job's CA that
			// names algo-3 of this job at the intruder's address, and a
			// client that trusts anything (an attacker's).
			cert, err := other.Issue(pki.LeafRequest{CommonName: "algo-3", Names: []string{in.Addr.String()},
				URIs: IdentityURIs(nw.Job, "algo-3"), Purpose: pki.PeerAuth, Lifetime: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			for _, creds := range [][]tls.Certificate{nil, {*cert}} {
				raw, err := dialOnce(in, netip.AddrPortFrom(h2.Addr, TunnelPort).String(), 2*time.Second)
				if err != nil {
					t.Logf("tunnel port: %v", err)
					continue
				}
				// An attacker's client: trusts anything, sends its
				// certificate whatever the server asks for.
				attacker := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{tlsconf.MeshALPN}, MinVersion: tls.VersionTLS13,
					GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
						if len(creds) == 0 {
							return &tls.Certificate{}, nil
						}
						return &creds[0], nil
					}}
				tc := tls.Client(raw, attacker)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				err = tc.Handshake()
				if err == nil {
					// TLS 1.3: the server judges the client's certificate
					// after the client has finished; its verdict is the
					// next thing on the wire.
					_, err = tc.Read(make([]byte, 1))
				}
				tc.Close()
				if err == nil {
					t.Fatalf("tunnel with %d certificate(s) accepted", len(creds))
				}
				t.Logf("tunnel with %d certificate(s): %v", len(creds), err)
			}
			// UDP to the host: dropped on the way in.
			in.Do(func() error {
				c, err := net.Dial("udp4", netip.AddrPortFrom(h2.Addr, 7777).String())
				if err == nil {
					c.Write([]byte("intruder"))
					c.Close()
				}
				return nil
			})
		})
	}
	select {
	case <-served:
		t.Fatal("algo-2's application accepted an intruder's connection")
	default:
	}
	if log := m.jobLog(t, "algo-2"); strings.Contains(log, "tunnel with algo-3") {
		t.Fatalf("algo-2 verified a tunnel with algo-3:\n%s", log)
	}
}

// Killing a host's agent fails the connections it carried, at both ends,
// reports the failure, and leaves nothing to flow in clear.
func TestMeshAgentKilled(t *testing.T) {
	nw := meshtest.New(t, 2)
	m := startMesh(t, nw, testSupervisor(t))
	h1, h2 := nw.Hosts[0], nw.Hosts[1]
	serve(t, h2, 7777, func(c net.Conn) {
		io.Copy(c, c)
	})
	c := dial(t, h1, netip.AddrPortFrom(h2.Addr, 7777).String())
	defer c.Close()
	fmt.Fprintf(c, "before\n")
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "before\n" {
		t.Fatalf("echo: %q %v", line, err)
	}

	p := m.job.process("algo-2")
	if p == nil {
		t.Fatal("no agent process for algo-2")
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var f *TunnelError
	select {
	case f = <-m.failures:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent's death was not reported")
	}
	if f.Host != "algo-2" || f.Exit != "signal: killed" {
		t.Fatalf("failure %+v", f)
	}
	if want := "inter-node encryption tunnel of algo-2 exited (signal: killed)"; f.Error() != want {
		t.Fatalf("error %q, want %q", f.Error(), want)
	}
	// The open connection fails with an error (on the write or the read
	// after it, whichever meets the reset first), not a clean end of file.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err := fmt.Fprintf(c, "after\n")
	if err == nil {
		_, err = r.ReadString('\n')
	}
	if err == nil || err == io.EOF {
		t.Fatalf("the connection through the dead agent: %v, want an error", err)
	}
	t.Logf("connection through the dead agent: %v", err)
	// New connections, either way, fail.
	for _, tc := range []struct {
		from *meshtest.Host
		to   netip.Addr
	}{{h1, h2.Addr}, {h2, h1.Addr}} {
		if c, err := dialOnce(tc.from, netip.AddrPortFrom(tc.to, 7777).String(), 2*time.Second); err == nil {
			// Accepted by a live agent whose peer is gone: it must fail.
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("x\n"))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatalf("%s reached %s through a dead agent", tc.from.Name, tc.to)
			}
			c.Close()
		}
	}
	if log := m.jobLog(t, "algo-2"); !strings.Contains(log, "tunnel of algo-2 exited (signal: killed)") {
		t.Errorf("algo-2's job log does not say the tunnel died:\n%s", log)
	}
}

// IdentityURIs is IdentityURI as a list, for pki.LeafRequest.
func IdentityURIs(job, host string) []*url.URL { return []*url.URL{IdentityURI(job, host)} }

// Under GODEBUG=fips140=only, with the fips profile, the agents run (Go's
// FIPS 140-3 module refuses anything it does not approve) and negotiate
// P-256 based key exchange and AES-GCM.
func TestMeshFIPSOnly(t *testing.T) {
	nw := meshtest.New(t, 2)
	sup := testSupervisor(t, "GODEBUG=fips140=only")
	sup.Profile = tlsconf.FIPS
	m := startMesh(t, nw, sup)
	h1, h2 := nw.Hosts[0], nw.Hosts[1]
	serve(t, h2, 7777, func(c net.Conn) { io.Copy(c, c) })
	c := dial(t, h1, netip.AddrPortFrom(h2.Addr, 7777).String())
	defer c.Close()
	msg := bytes.Repeat([]byte("fips"), 100000)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through FIPS agents: %v", err)
	}
	log := m.jobLog(t, "algo-1")
	if !strings.Contains(log, "tunnel with algo-2") || !strings.Contains(log, "TLS_AES_") || strings.Contains(log, "X25519") ||
		!strings.Contains(log, "FIPS 140-3 module") {
		t.Fatalf("job log of a FIPS tunnel:\n%s", log)
	}
	t.Log(log)
}

// An agent dies with the convoy that started it, however convoy dies.
func TestAgentDiesWithConvoy(t *testing.T) {
	nw := meshtest.New(t, 2)
	hn, _ := json.Marshal(nw.HostNet(0))
	file := filepath.Join(t.TempDir(), "hostnet.json")
	if err := os.WriteFile(file, hn, 0o600); err != nil {
		t.Fatal(err)
	}
	convoy := exec.Command(os.Args[0])
	convoy.Env = append(os.Environ(), superviseEnv+"="+file)
	out, err := convoy.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	convoy.Stderr = testWriter{t}
	if err := convoy.Start(); err != nil {
		t.Fatal(err)
	}
	defer convoy.Process.Kill()
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		convoy.Process.Kill()
		convoy.Wait()
		t.Fatalf("the supervising process did not start its agent: %v", err)
	}
	if !processAlive(pid) {
		t.Fatalf("agent %d not running", pid)
	}
	convoy.Process.Kill() // a crash: no cleanup of any kind
	convoy.Wait()
	waitFor(t, "the agent to die with its convoy", func() bool { return !processAlive(pid) })
	if n, err := KillStrays(filepath.Dir(nw.Hosts[0].Dir)); n != 0 || err != nil {
		t.Fatalf("strays after the agent died: %d %v", n, err)
	}
}

// processAlive tells whether pid runs (a zombie does not).
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// KillStrays kills what looks like an agent under the directory, and
// nothing else.
func TestKillStrays(t *testing.T) {
	dir := t.TempDir()
	start := func(config string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "mesh-agent", "--config", config)
		cmd.Env = append(os.Environ(), idleEnv+"=1")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	stray := start(filepath.Join(dir, "jobs", "j", "algo-1", "private", "agent.json"))
	other := start(filepath.Join(t.TempDir(), "agent.json"))
	waitFor(t, "the processes to start", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", stray.Process.Pid))
		return bytes.Contains(b, []byte("mesh-agent"))
	})
	n, err := KillStrays(dir)
	if n != 1 || err != nil {
		t.Fatalf("KillStrays: %d %v", n, err)
	}
	if err := stray.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("stray: %v", err)
	}
	if !processAlive(other.Process.Pid) {
		t.Fatal("KillStrays killed an agent outside its directory")
	}
}
