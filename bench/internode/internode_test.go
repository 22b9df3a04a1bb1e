package internode

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"convoy/internal/mesh"
	"convoy/internal/mesh/meshtest"
	"convoy/internal/pki"
	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// Settings, from the environment:
//
//	CONVOY_BENCH_ROUNDS       rounds per configuration (5)
//	CONVOY_BENCH_ROUND_TIME   length of one iperf3 or go-tls run (5s)
//	CONVOY_BENCH_CONNS        connections per latency sample (500)
//	CONVOY_BENCH_ONLY         comma-separated configurations to run, for profiling one
//	                          (plain, convoy, stunnel, go-tls); ratios need all four
type settings struct {
	rounds    int
	roundTime time.Duration
	conns     int
}

func benchSettings(t *testing.T) settings {
	t.Helper()
	s := settings{rounds: 5, roundTime: 5 * time.Second, conns: 500}
	for name, dst := range map[string]*int{"CONVOY_BENCH_ROUNDS": &s.rounds, "CONVOY_BENCH_CONNS": &s.conns} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive integer", name, v)
			}
			*dst = n
		}
	}
	if v := os.Getenv("CONVOY_BENCH_ROUND_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			t.Fatalf("CONVOY_BENCH_ROUND_TIME=%q: want a duration of 1s or more", v)
		}
		s.roundTime = d
	}
	return s
}

func needBench(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv("CONVOY_BENCH") == "" {
		t.Skip("set CONVOY_BENCH=1 to run the inter-node encryption measurement")
	}
	for _, tool := range []string{"iperf3", "stunnel4"} {
		harness.Tool(t, tool)
	}
	t.Logf("CPU  %d CPUs, GOMAXPROCS %d, load %s, %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), loadavg(), runtime.Version())
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

const (
	iperfPort   = 5201
	echoPort    = 7000
	stunnelBulk = 15201 // stunnel's ports, on loopback of the client side and on the server's address
	stunnelEcho = 17000
)

// bench is the three networks under test.
type bench struct {
	plain, meshed *meshtest.Network
	agentPIDs     []int
	stunnelPIDs   []int
	iperfPIDs     []int
}

// setup builds the two networks (one bare, one with the mesh), starts
// iperf3 and echo servers in each, and stunnel over the bare one.
func setup(t *testing.T) *bench {
	t.Helper()
	b := &bench{plain: meshtest.New(t, 2), meshed: meshtest.New(t, 2)}
	sup := &mesh.Supervisor{
		Command: []string{harness.Binary(t), "mesh-agent"},
		Profile: tlsconf.Modern,
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	logDir := t.TempDir()
	job := sup.NewJob(mesh.JobOptions{
		Lifetime:  time.Hour,
		JobLog:    func(host string) string { return filepath.Join(logDir, host+".log") },
		OnFailure: func(e *mesh.TunnelError) { t.Errorf("mesh agent failed: %v", e) },
	})
	t.Cleanup(job.Close)
	for i := range b.meshed.Hosts {
		stop, err := job.HostSetup(context.Background(), b.meshed.HostNet(i))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
	}
	b.agentPIDs = agentPIDs(b.meshed.Hosts[0].Dir, b.meshed.Hosts[1].Dir)
	if len(b.agentPIDs) != 2 {
		t.Fatalf("found agents %v, want 2", b.agentPIDs)
	}
	for _, nw := range []*meshtest.Network{b.plain, b.meshed} {
		srv := nw.Hosts[1]
		cmd := srv.Command("iperf3", "-s", "-p", strconv.Itoa(iperfPort))
		start(t, cmd)
		b.iperfPIDs = append(b.iperfPIDs, cmd.Process.Pid)
		echo(t, srv)
	}
	b.stunnelPIDs = startStunnel(t, b.plain)
	// The mesh carries a port once its listener has reached the peer's
	// rules; stunnel once it listens.
	for _, to := range []struct {
		h  *meshtest.Host
		ap netip.AddrPort
	}{
		{b.meshed.Hosts[0], netip.AddrPortFrom(b.meshed.Hosts[1].Addr, iperfPort)},
		{b.meshed.Hosts[0], netip.AddrPortFrom(b.meshed.Hosts[1].Addr, echoPort)},
		{b.plain.Hosts[0], netip.AddrPortFrom(b.plain.Hosts[1].Addr, iperfPort)},
		{b.plain.Hosts[0], loopback(stunnelBulk)},
		{b.plain.Hosts[0], loopback(stunnelEcho)},
	} {
		waitDial(t, to.h, to.ap)
	}
	return b
}

func loopback(port int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(port))
}

func start(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Args, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

// echo serves, on echoPort of h, one byte back per connection.
func echo(t *testing.T, h *meshtest.Host) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", echoPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err == nil {
					c.Write(b[:])
				}
			}()
		}
	}()
}

func waitDial(t *testing.T, h *meshtest.Host, ap netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := h.Do(func() error {
			c, err := net.DialTimeout("tcp4", ap.String(), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s cannot reach %s: %v", h.Name, ap, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentPIDs finds the mesh agents whose configuration is in one of dirs.
func agentPIDs(dirs ...string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if !slices.Contains(args, "mesh-agent") {
			continue
		}
		for _, d := range dirs {
			if slices.Contains(args, filepath.Join(d, "agent.json")) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// startStunnel runs stunnel4 over the bare network: client side in
// algo-1 (accepting on loopback), server side in algo-2, mutual TLS 1.3
// with certificates of a CA made for the bench.
func startStunnel(t *testing.T, nw *meshtest.Network) []int {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewEphemeralCA("bench stunnel CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", ca.PEM())
	server := nw.Hosts[1]
	var pids []int
	for i, side := range []struct {
		host   *meshtest.Host
		client bool
	}{{nw.Hosts[0], true}, {server, false}} {
		cert, err := ca.Issue(pki.LeafRequest{CommonName: side.host.Name, Names: []string{side.host.Addr.String()}, Purpose: pki.PeerAuth, Lifetime: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		pemBytes, err := pki.EncodeCertificate(cert)
		if err != nil {
			t.Fatal(err)
		}
		certFile := write(fmt.Sprintf("host%d.pem", i), pemBytes)
		var conf strings.Builder
		fmt.Fprintf(&conf, "foreground = yes\npid =\ndebug = 3\nsyslog = no\n")
		for _, svc := range []struct {
			name         string
			port, target int
		}{{"bulk", stunnelBulk, iperfPort}, {"echo", stunnelEcho, echoPort}} {
			fmt.Fprintf(&conf, "[%s]\ncert = %s\nCAfile = %s\nverifyChain = yes\nsslVersionMin = TLSv1.3\n", svc.name, certFile, caFile)
			if side.client {
				fmt.Fprintf(&conf, "client = yes\naccept = 127.0.0.1:%d\nconnect = %s:%d\ncheckIP = %s\n", svc.port, server.Addr, svc.port, server.Addr)
			} else {
				fmt.Fprintf(&conf, "accept = %s:%d\nconnect = 127.0.0.1:%d\n", server.Addr, svc.port, svc.target)
			}
		}
		confFile := write(fmt.Sprintf("stunnel%d.conf", i), []byte(conf.String()))
		cmd := side.host.Command("stunnel4", confFile)
		cmd.Stderr = io.Discard
		start(t, cmd)
		pids = append(pids, cmd.Process.Pid)
	}
	return pids
}

// sample is one measured run. CPU figures are CPU-seconds.
type sample struct {
	gbps     float64 // payload, received
	bytes    float64
	busy     float64 // the whole machine: all but idle, iowait and steal
	irq      float64 // hard and soft interrupts (network processing, mostly ours)
	ours     float64 // the processes of the configuration
	duration float64
}

// cpuPerGB is what the machine spent per GB moved: the configuration's
// processes, the kernel's packet processing, and whatever other processes
// ran (otherCores says how much that was).
func (s sample) cpuPerGB() float64 { return s.busy / (s.bytes / 1e9) }

// otherCores is how busy other processes kept the machine, in cores.
func (s sample) otherCores() float64 { return max(0, s.busy-s.irq-s.ours) / s.duration }

// cpuStat reads /proc/stat's aggregate line: busy and interrupt seconds.
func cpuStat() (busy, irq float64) {
	data, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		switch i {
		case 0, 1, 2: // user, nice, system
			busy += x
		case 5, 6: // irq, softirq
			busy += x
			irq += x
		}
	}
	return busy / 100, irq / 100 // USER_HZ
}

// procCPU is the CPU-seconds a process has used.
func procCPU(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return (u + k) / 100
}

func sumCPU(pids []int) float64 {
	var s float64
	for _, p := range pids {
		s += procCPU(p)
	}
	return s
}

// iperf runs iperf3 -c from h to ap with streams streams for d.
func iperf(t *testing.T, h *meshtest.Host, ap netip.AddrPort, streams int, d time.Duration, watch []int) sample {
	t.Helper()
	cmd := h.Command("iperf3", "-c", ap.Addr().String(), "-p", strconv.Itoa(int(ap.Port())), "-P", strconv.Itoa(streams),
		"-t", strconv.Itoa(int(d.Seconds())), "-J")
	busy0, irq0 := cpuStat()
	ours0 := sumCPU(watch)
	out, err := cmd.Output()
	busy1, irq1 := cpuStat()
	ours1 := sumCPU(watch)
	if err != nil {
		t.Fatalf("iperf3 to %s: %v\n%s", ap, err, out)
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes   float64 `json:"bytes"`
				Seconds float64 `json:"seconds"`
				BPS     float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("iperf3 output: %v\n%s", err, out)
	}
	if r.Error != "" || r.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 to %s: %q, %v bytes received", ap, r.Error, r.End.SumReceived.Bytes)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	client := float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	s := r.End.SumReceived
	return sample{gbps: s.BPS / 1e9, bytes: s.Bytes, busy: busy1 - busy0, irq: irq1 - irq0, ours: ours1 - ours0 + client, duration: s.Seconds}
}

// goTLS is the go-tls configuration: streams connections over loopback in
// this process, each writing 256 KiB buffers to a reader that discards
// them, with convoy's modern profile (TLS 1.3, AES-128-GCM).
func goTLS(t *testing.T, streams int, d time.Duration) sample {
	t.Helper()
	ca, err := pki.NewEphemeralCA("bench go-tls CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue(pki.LeafRequest{CommonName: "127.0.0.1", Names: []string{"127.0.0.1"}, Purpose: pki.ServerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp4", "127.0.0.1:0", tlsconf.Server(tlsconf.Modern,
		func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }, tlsconf.ServerOptions{NextProtos: []string{"bench"}}))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		mu    sync.Mutex
		total int64
		wg    sync.WaitGroup
	)
	wg.Add(streams)
	go func() {
		for range streams {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer wg.Done()
				n, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 256<<10))
				mu.Lock()
				total += n
				mu.Unlock()
			}()
		}
	}()
	var conns []*tls.Conn
	for range streams {
		c, err := tls.Dial("tcp4", ln.Addr().String(), tlsconf.Client(tlsconf.Modern, ca.Pool(), "127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	busy0, irq0 := cpuStat()
	self0 := procCPU(os.Getpid())
	t0 := time.Now()
	var wwg sync.WaitGroup
	for _, c := range conns {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			buf := make([]byte, 256<<10)
			for time.Since(t0) < d {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
			c.Close()
		}()
	}
	wwg.Wait()
	wg.Wait()
	el := time.Since(t0).Seconds()
	busy1, irq1 := cpuStat()
	self1 := procCPU(os.Getpid())
	return sample{gbps: float64(total) * 8 / el / 1e9, bytes: float64(total), busy: busy1 - busy0, irq: irq1 - irq0, ours: self1 - self0, duration: el}
}

// latency measures n connections made one after the other from h to ap:
// dial, one byte there and back, close. It returns each one's duration.
func latency(t *testing.T, h *meshtest.Host, ap netip.AddrPort, n int) []time.Duration {
	t.Helper()
	var out []time.Duration
	err := h.Do(func() error {
		for range n {
			t0 := time.Now()
			c, err := net.DialTimeout("tcp4", ap.String(), 5*time.Second)
			if err != nil {
				return err
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte{1}); err != nil {
				c.Close()
				return err
			}
			if _, err := io.ReadFull(bufio.NewReader(c), make([]byte, 1)); err != nil {
				c.Close()
				return err
			}
			out = append(out, time.Since(t0))
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("latency to %s: %v", ap, err)
	}
	return out
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestInternodeRatio is the side-by-side measurement RESULTS.md quotes. It
// asserts nothing about the figures: only a failed run fails it.
func TestInternodeRatio(t *testing.T) {
	needBench(t)
	s := benchSettings(t)
	b := setup(t)
	targets := []struct {
		name  string
		host  *meshtest.Host
		ap    netip.AddrPort
		watch []int
	}{
		{"plain", b.plain.Hosts[0], netip.AddrPortFrom(b.plain.Hosts[1].Addr, iperfPort), b.iperfPIDs[:1]},
		{"convoy", b.meshed.Hosts[0], netip.AddrPortFrom(b.meshed.Hosts[1].Addr, iperfPort), append(slices.Clone(b.iperfPIDs[1:2]), b.agentPIDs...)},
		{"stunnel", b.plain.Hosts[0], loopback(stunnelBulk), append(slices.Clone(b.iperfPIDs[:1]), b.stunnelPIDs...)},
	}
	t.Logf("agents %v, stunnel %v, iperf3 servers %v", b.agentPIDs, b.stunnelPIDs, b.iperfPIDs)
	for _, streams := range []int{1, 4} {
		res := map[string][]sample{}
		for r := range s.rounds {
			order := []int{0, 1, 2, 3}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			for _, i := range order {
				if only := os.Getenv("CONVOY_BENCH_ONLY"); only != "" && !slices.Contains(strings.Split(only, ","), []string{"plain", "convoy", "stunnel", "go-tls"}[i]) {
					continue
				}
				if i == 3 {
					res["go-tls"] = append(res["go-tls"], goTLS(t, streams, s.roundTime))
					continue
				}
				tg := targets[i]
				res[tg.name] = append(res[tg.name], iperf(t, tg.host, tg.ap, streams, s.roundTime, tg.watch))
			}
		}
		type summary struct{ gbps, cpuPerGB, cores, other float64 }
		med := map[string]summary{}
		for name, ss := range res {
			var g, c, o, other []float64
			for _, x := range ss {
				g = append(g, x.gbps)
				c = append(c, x.cpuPerGB())
				o = append(o, x.ours/x.duration)
				other = append(other, x.otherCores())
			}
			med[name] = summary{median(g), median(c), median(o), median(other)}
			t.Logf("ROUNDS %d stream(s) %-8s Gb/s %s  other processes (cores) %s", streams, name, fmtList(g), fmtList(other))
		}
		if len(med) < 4 {
			continue
		}
		for _, name := range []string{"plain", "convoy", "stunnel", "go-tls"} {
			m := med[name]
			t.Logf("RESULT %d stream(s) %-8s %6.2f Gb/s  %.3f of plain  machine CPU %.2f s/GB (%+.2f vs plain)  its processes %.2f cores  other processes %.2f cores",
				streams, name, m.gbps, m.gbps/med["plain"].gbps, m.cpuPerGB, m.cpuPerGB-med["plain"].cpuPerGB, m.cores, m.other)
		}
		c, p, st, g := med["convoy"].gbps, med["plain"].gbps, med["stunnel"].gbps, med["go-tls"].gbps
		t.Logf("GOAL   %d stream(s) convoy/plain %.3f vs 0.9 × go-tls/plain = %.3f: %s;  convoy/stunnel %.2f vs 2: %s",
			streams, c/p, 0.9*g/p, verdict(c/p >= 0.9*g/p), c/st, verdict(c/st >= 2))
	}

	lat := map[string][]time.Duration{}
	for range s.rounds {
		for _, tg := range []struct {
			name string
			h    *meshtest.Host
			ap   netip.AddrPort
		}{
			{"plain", b.plain.Hosts[0], netip.AddrPortFrom(b.plain.Hosts[1].Addr, echoPort)},
			{"convoy", b.meshed.Hosts[0], netip.AddrPortFrom(b.meshed.Hosts[1].Addr, echoPort)},
			{"stunnel", b.plain.Hosts[0], loopback(stunnelEcho)},
		} {
			lat[tg.name] = append(lat[tg.name], latency(t, tg.h, tg.ap, s.conns/s.rounds+1)...)
		}
	}
	for _, name := range []string{"plain", "convoy", "stunnel"} {
		l := lat[name]
		t.Logf("LATENCY %-8s connect + 1-byte round trip, %d connections: p50 %v  p99 %v  (added vs plain: p50 %v, p99 %v)",
			name, len(l), percentile(l, 0.5).Round(time.Microsecond), percentile(l, 0.99).Round(time.Microsecond),
			(percentile(l, 0.5) - percentile(lat["plain"], 0.5)).Round(time.Microsecond),
			(percentile(l, 0.99) - percentile(lat["plain"], 0.99)).Round(time.Microsecond))
	}
	t.Logf("CPU  load after the run %s", loadavg())
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func fmtList(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return strings.Join(parts, " ")
}
