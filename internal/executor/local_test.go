package executor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The tests below run real containers: they need root and runc, and skip
// otherwise. They share one Local whose state directory is fixed, so that a
// run killed half-way is reaped by the next one, and hold a lock so that
// two runs do not reap each other.
var (
	testLocal  *Local
	testRootFS string // holds /bin/probe and /work
	skipReason string
	jobSeq     atomic.Int32
)

const testStateDir = "/tmp/convoy-executor-test"

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipReason = "needs root"
	} else if _, err := exec.LookPath("runc"); err != nil {
		skipReason = "needs runc (apt-get install runc)"
	}
	if skipReason != "" {
		return m.Run()
	}
	lock, err := os.OpenFile(testStateDir+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err == nil {
		err = unix.Flock(int(lock.Fd()), unix.LOCK_EX)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lock:", err)
		return 1
	}
	defer lock.Close()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	testLocal, err = NewLocal(testStateDir, log)
	if err == nil {
		err = testLocal.Reap(nil) // a previous run that was killed
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "executor:", err)
		return 1
	}
	testRootFS, err = buildProbeRootFS()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build probe:", err)
		return 1
	}
	defer os.RemoveAll(testRootFS)
	code := m.Run()
	if err := testLocal.Reap(nil); err != nil {
		fmt.Fprintln(os.Stderr, "final reap:", err)
		code = 1
	}
	return code
}

// buildProbeRootFS builds testdata/probe as a static binary into a fresh
// root filesystem.
func buildProbeRootFS() (string, error) {
	dir, err := os.MkdirTemp("", "convoy-probe-rootfs-")
	if err != nil {
		return "", err
	}
	for _, d := range []string{"bin", "work"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(dir, "bin", "probe"), "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return dir, nil
}

func needRunc(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		// Not a skip: the test script installs runc and CI runs as root, so
		// a missing prerequisite is a broken environment to report.
		t.Fatal(skipReason + ": run scripts/test.sh as root")
	}
}

// baseSpec is a one-host isolated job running probe with args.
func baseSpec(t *testing.T, args ...string) JobSpec {
	return JobSpec{
		ID:     fmt.Sprintf("t%d-%d", os.Getpid()%10000, jobSeq.Add(1)),
		Hosts:  1,
		RootFS: testRootFS,
		Args:   append([]string{"/bin/probe"}, args...),
		Env:    []string{"PATH=/bin"},
		LogDir: t.TempDir(),
	}
}

// start starts a job and cleans it up when the test ends.
func start(t *testing.T, spec JobSpec) *localJob {
	t.Helper()
	t0 := time.Now()
	j, err := testLocal.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Logf("start of %d host(s) took %v", spec.Hosts, time.Since(t0).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := j.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return j.(*localJob)
}

func wait(t *testing.T, j Job, timeout time.Duration) []HostResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := j.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return res
}

func readLog(t *testing.T, spec JobSpec, host string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(spec.LogDir, host+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantLines(t *testing.T, log string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q; log:\n%s", w, log)
		}
	}
}

// waitLog polls a host's log for s.
func waitLog(t *testing.T, spec JobSpec, host, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readLog(t, spec, host), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %q", host, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOneHost(t *testing.T) {
	needRunc(t)
	input, model := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(input, "data.txt"), []byte("training data"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := baseSpec(t,
		"env", "--", "read", "/opt/ml/input/data.txt",
		"--", "write", "/opt/ml/input/new", "--", "write", "/opt/ml/model/model.bin",
		"--", "write", "/bin/evil", "--", "write", "/etc/hosts", "--", "write", "/tmp/scratch",
		"--", "unshare",
		"--", "read", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "--", "read", "/sys/fs/cgroup/memory.max",
		"--", "read", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "--", "read", "/sys/fs/cgroup/cpu.max",
		"--", "read", "/etc/hosts", "--", "read", "/sys/class/net/eth0/operstate",
		"--", "exit", "3")
	spec.Env = append(spec.Env, "SM_HOSTS=[\"algo-1\"]", "FOO=bar")
	spec.WorkDir = "/work"
	spec.MemoryBytes = 256 << 20
	spec.CPUs = 0.5
	spec.Mounts = func(host string) []Mount {
		return []Mount{
			{Source: input, Destination: "/opt/ml/input", ReadOnly: true},
			{Source: model, Destination: "/opt/ml/model"},
		}
	}
	j := start(t, spec)
	if got := j.Hosts(); len(got) != 1 || got[0] != "algo-1" {
		t.Fatalf("hosts %v", got)
	}
	res := wait(t, j, 20*time.Second)
	if r := res[0]; r.Host != "algo-1" || r.ExitCode != 3 || r.Signal != "" || r.Err != nil {
		t.Errorf("result %+v, want algo-1 exit 3", r)
	}
	log := readLog(t, spec, "algo-1")
	if testing.Verbose() {
		t.Logf("algo-1 log:\n%s", log)
	}
	wantLines(t, log,
		"hostname=algo-1 cwd=/work uid=0",
		"CapEff: 0000000000000000", "CapBnd: 0000000000000000", "NoNewPrivs: 1", "Seccomp: 2",
		"env FOO=bar", `env SM_HOSTS=["algo-1"]`,
		`read /opt/ml/input/data.txt: "training data"`,
		"write /opt/ml/input/new denied", "write /opt/ml/model/model.bin ok",
		"write /bin/evil denied", "write /etc/hosts denied", "write /tmp/scratch ok",
		"unshare denied: operation not permitted",
		`read /etc/hosts: "127.0.0.1\tlocalhost\n`+hostAddrOf(j.m.Subnet, 0).String()+`\talgo-1\n"`,
		`read /sys/class/net/eth0/operstate: "up\n"`,
	)
	if _, err := os.Stat(filepath.Join(model, "model.bin")); err != nil {
		t.Errorf("model written in the container is not on the host: %v", err)
	}
	for _, p := range []string{filepath.Join(input, "new"), filepath.Join(testRootFS, "bin", "evil"), filepath.Join(testRootFS, "opt")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists on the host", p)
		}
	}
	if cg := testLocal.Cgroups(); cg.Memory {
		if !strings.Contains(log, strconv.Itoa(256<<20)) && !strings.Contains(log, "memory.max: \"268435456") {
			t.Errorf("memory limit not visible in the container (cgroups %s)", cg)
		}
	} else {
		t.Logf("memory cgroup unavailable (%s): limit not checked", cg)
	}
	if cg := testLocal.Cgroups(); cg.CPU {
		if !strings.Contains(log, `cpu.cfs_quota_us: "50000`) && !strings.Contains(log, `cpu.max: "50000 100000`) {
			t.Errorf("cpu limit not visible in the container (cgroups %s)", cg)
		}
	}
}

func TestStartFailure(t *testing.T) {
	needRunc(t)
	spec := baseSpec(t)
	spec.Args = []string{"/bin/no-such-program"}
	j, err := testLocal.Start(context.Background(), spec)
	if err == nil {
		res := wait(t, j, 10*time.Second)
		if res[0].ExitCode == 0 || res[0].Err == nil {
			t.Errorf("missing binary: result %+v, want an error", res[0])
		}
		t.Logf("missing binary: %+v", res[0])
		if err := j.Cleanup(); err != nil {
			t.Error(err)
		}
	} else {
		t.Logf("missing binary: start failed: %v", err)
	}
	wantLines(t, readLog(t, spec, "algo-1"), "no-such-program") // runc's message, for the user
	if _, err := os.Stat(testLocal.jobDir(spec.ID)); err == nil {
		t.Errorf("job dir left after a failed job")
	}
	if _, err := testLocal.Start(context.Background(), JobSpec{ID: "Bad_ID", Hosts: 1}); err == nil {
		t.Error("bad id accepted")
	}

	spec = baseSpec(t, "env")
	spec.Mounts = func(string) []Mount { return []Mount{{Source: "/nonexistent", Destination: "/opt/ml/input"}} }
	if _, err := testLocal.Start(context.Background(), spec); err == nil {
		t.Error("missing mount source accepted")
	}

	// algo-1 starts, algo-2 cannot (its mount point is below a file):
	// Start undoes everything, algo-1 included.
	spec = baseSpec(t, "ignore-term")
	spec.Hosts = 2
	src := t.TempDir()
	spec.Mounts = func(host string) []Mount {
		if host == "algo-2" {
			return []Mount{{Source: src, Destination: "/bin/probe/input"}}
		}
		return nil
	}
	m := testLocal.newManifest(spec)
	if _, err := testLocal.Start(context.Background(), spec); err == nil {
		t.Fatal("start with an impossible mount succeeded")
	} else {
		t.Logf("half-started job: %v", err)
	}
	if left := leftovers(t, testLocal, m); len(left) > 0 {
		t.Errorf("left after a failed start: %v", left)
	}
	if strings.Contains(readLog(t, spec, "algo-1"), "ignoring SIGTERM") {
		t.Log("algo-1 had started and was stopped")
	}
}

func TestTwoHosts(t *testing.T) {
	needRunc(t)
	inputs := map[string]string{"algo-1": t.TempDir(), "algo-2": t.TempDir()}
	spec := baseSpec(t)
	spec.Hosts = 2
	spec.Mounts = func(host string) []Mount {
		return []Mount{{Source: inputs[host], Destination: "/opt/ml/input", ReadOnly: true}}
	}
	// algo-1 waits for the go-ahead so that a capture can start first.
	spec.Args = []string{"/bin/probe", "script", "/opt/ml/input/go"}
	if err := writeScript(filepath.Join(inputs["algo-2"], "go"), "env\nserve 5000\n"); err != nil {
		t.Fatal(err)
	}
	j := start(t, spec)

	capture := startCapture(t, j.BridgeName())
	const msg = "hello-across-the-bridge"
	if err := writeScript(filepath.Join(inputs["algo-1"], "go"), "dial algo-2:5000 "+msg+"\n"); err != nil {
		t.Fatal(err)
	}
	res := wait(t, j, 30*time.Second)
	for _, r := range res {
		if r.ExitCode != 0 || r.Err != nil {
			t.Errorf("result %+v", r)
		}
	}
	log1, log2 := readLog(t, spec, "algo-1"), readLog(t, spec, "algo-2")
	wantLines(t, log1, fmt.Sprintf("dialed algo-2:5000 got %q", "echo "+msg))
	h1 := hostAddrOf(j.m.Subnet, 0)
	wantLines(t, log2, "hostname=algo-2", fmt.Sprintf("served %q from %s:", msg, h1))

	// Both veths carried the exchange.
	for _, h := range j.m.Hosts {
		link, err := netlink.LinkByName(h.Veth)
		if err != nil {
			t.Fatal(err)
		}
		if st := link.Attrs().Statistics; st == nil || st.RxPackets == 0 || st.TxPackets == 0 {
			t.Errorf("%s (%s): no traffic counted: %+v", h.Veth, h.Name, st)
		}
	}
	if capture != nil {
		pcap := capture()
		if !bytes.Contains(pcap, []byte(msg)) {
			t.Errorf("capture on %s (%d bytes) lacks the message", j.BridgeName(), len(pcap))
		} else {
			t.Logf("capture on %s shows the exchange in clear (%d bytes)", j.BridgeName(), len(pcap))
		}
	}
}

// writeScript gives a host its steps, atomically: probe polls for the file.
func writeScript(path, script string) error {
	if err := os.WriteFile(path+".tmp", []byte(script), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// startCapture runs tshark on the bridge, if installed, and returns a
// function that stops it and returns the capture.
func startCapture(t *testing.T, bridge string) func() []byte {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Log("tshark not installed: no capture")
		return nil
	}
	file := filepath.Join(t.TempDir(), "bridge.pcap")
	cmd := exec.Command(tshark, "-i", bridge, "-a", "duration:30", "-w", file)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Logf("tshark: %v", err)
		return nil
	}
	ready := make(chan bool, 2)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Capturing on") {
				ready <- true
			}
		}
		ready <- false
		io.Copy(io.Discard, stderr)
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Log("tshark did not start")
			return nil
		}
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Log("tshark did not start in time")
		return nil
	}
	// "Capturing on" comes before the capture does, and the file lags the
	// capture: a marker frame sent on the bridge and seen in the file
	// proves that everything before it is there.
	mark := func(marker string) bool {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if err := sendFrame(bridge, []byte(marker)); err != nil {
				t.Fatalf("marker frame: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
			if b, _ := os.ReadFile(file); bytes.Contains(b, []byte(marker)) {
				return true
			}
		}
		return false
	}
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	if !mark("convoy-capture-start") {
		stop()
		t.Log("tshark captured nothing")
		return nil
	}
	return func() []byte {
		if !mark("convoy-capture-end") {
			t.Error("capture stalled")
		}
		stop()
		b, _ := os.ReadFile(file)
		return b
	}
}

// sendFrame broadcasts an Ethernet frame of a local experimental type on
// ifname, through a packet socket: no IP layer, no nftables.
func sendFrame(ifname string, payload []byte) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	bcast := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	frame := append(append(append(slices.Clone(bcast), link.Attrs().HardwareAddr...), 0x88, 0xb5), payload...)
	to := &unix.SockaddrLinklayer{Ifindex: link.Attrs().Index, Halen: 6}
	copy(to.Addr[:], bcast)
	return unix.Sendto(fd, frame, 0, to)
}

// echoServer accepts on ln until it is closed, echoing one line per
// connection, and counts connections.
func echoServer(t *testing.T, ln net.Listener) *atomic.Int32 {
	var n atomic.Int32
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "echo %s", line)
				}
			}()
		}
	}()
	return &n
}

func listen(t *testing.T, addr string) (net.Listener, netip.AddrPort, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln, netip.MustParseAddrPort(ln.Addr().String()), echoServer(t, ln)
}

// outside is a network namespace the test owns, standing for the world
// beyond the caller's namespace: 10.213.255.2 in it, 10.213.255.1 on the
// caller's side (the executor never allocates 10.213.255.0/24).
type outside struct {
	ns         string
	local, far netip.Addr
}

func newOutside(t *testing.T) *outside {
	t.Helper()
	o := &outside{
		ns:    filepath.Join(t.TempDir(), "outside-netns"),
		local: netip.MustParseAddr("10.213.255.1"),
		far:   netip.MustParseAddr("10.213.255.2"),
	}
	const link = "cvtest-out"
	deleteLink(link)
	if err := newNetns(o.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := deleteLink(link); err != nil {
			t.Error(err)
		}
		if err := removeNetns(o.ns); err != nil {
			t.Error(err)
		}
	})
	if err := createVeth(vethConfig{name: link, alias: "convoy executor test", netns: o.ns, addr: o.far}); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(link)
	if err == nil {
		err = netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(o.local, 24)})
	}
	if err != nil {
		t.Fatal(err)
	}
	// Replies from the outside to a job are forwarded back through this
	// link: forwarding on for it alone.
	if err := writeSysctl(ipv4Conf(link, "forwarding"), "1"); err != nil {
		t.Fatal(err)
	}
	return o
}

// listen opens a listener inside the outside namespace.
func (o *outside) listen(t *testing.T) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded
		ns, err := netns.GetFromPath(o.ns)
		if err == nil {
			err = netns.Set(ns)
			ns.Close()
		}
		if err != nil {
			ch <- result{err: err}
			return
		}
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(o.far, 0).String())
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return netip.MustParseAddrPort(r.ln.Addr().String()), echoServer(t, r.ln)
}

func bridgeAddr(t *testing.T, j Job) netip.Addr {
	t.Helper()
	link, err := netlink.LinkByName(j.BridgeName())
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 {
		t.Fatalf("bridge addresses %v %v", addrs, err)
	}
	a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
	return a
}

// reachable checks that a listener works, from the caller's namespace, and
// waits until it has counted the connection.
func reachable(t *testing.T, ap netip.AddrPort, hits *atomic.Int32) {
	t.Helper()
	n := hits.Load()
	c, err := net.DialTimeout("tcp4", ap.String(), 2*time.Second)
	if err != nil {
		t.Fatalf("listener %s not reachable from the caller: %v", ap, err)
	}
	c.Close()
	for hits.Load() == n {
		time.Sleep(time.Millisecond)
	}
}

func TestIsolated(t *testing.T) {
	needRunc(t)
	out := newOutside(t)
	_, loop, loopHits := listen(t, "127.0.0.1:0")
	far, farHits := out.listen(t)
	reachable(t, loop, loopHits)
	reachable(t, far, farHits)

	inputs := map[string]string{"algo-1": t.TempDir(), "algo-2": t.TempDir()}
	spec := baseSpec(t, "script", "/opt/ml/input/go")
	spec.Hosts = 2
	spec.Mounts = func(host string) []Mount {
		return []Mount{{Source: inputs[host], Destination: "/opt/ml/input", ReadOnly: true}}
	}
	j := start(t, spec)

	_, gw, gwHits := listen(t, netip.AddrPortFrom(bridgeAddr(t, j), 0).String())
	reachable(t, gw, gwHits)
	before := [3]int32{loopHits.Load(), farHits.Load(), gwHits.Load()}
	svc := ContainerAddr(loop)
	// The hosts reach each other; both try everything else.
	reach := fmt.Sprintf("reach %s %s %s %s\n", svc, gw, far, loop)
	for host, script := range map[string]string{"algo-1": "dial algo-2:6000 peer\n" + reach, "algo-2": "serve 6000\n" + reach} {
		if err := writeScript(filepath.Join(inputs[host], "go"), script); err != nil {
			t.Fatal(err)
		}
	}
	res := wait(t, j, 40*time.Second)
	for _, r := range res {
		if r.ExitCode != 0 || r.Err != nil {
			t.Errorf("result %+v", r)
		}
	}
	for _, host := range j.Hosts() {
		log := readLog(t, spec, host)
		wantLines(t, log,
			fmt.Sprintf("reach %s fail", svc), fmt.Sprintf("reach %s fail", gw),
			fmt.Sprintf("reach %s fail", far), fmt.Sprintf("reach %s fail", loop))
	}
	wantLines(t, readLog(t, spec, "algo-1"), fmt.Sprintf("dialed algo-2:6000 got %q", "echo peer"))
	after := [3]int32{loopHits.Load(), farHits.Load(), gwHits.Load()}
	if after != before {
		t.Errorf("listeners outside the job were connected to: %v -> %v", before, after)
	}
}

func TestEndpoint(t *testing.T) {
	needRunc(t)
	out := newOutside(t)
	_, loopOK, loopOKHits := listen(t, "127.0.0.1:0")
	_, loopNo, loopNoHits := listen(t, "127.0.0.1:0")
	_, localOK, localOKHits := listen(t, netip.AddrPortFrom(out.local, 0).String())
	_, localNo, localNoHits := listen(t, netip.AddrPortFrom(out.local, 0).String())
	farOK, farOKHits := out.listen(t)
	farNo, farNoHits := out.listen(t)

	input := t.TempDir()
	spec := baseSpec(t, "script", "/opt/ml/input/go")
	spec.Network = Endpoint
	spec.Allow = []netip.AddrPort{loopOK, localOK, farOK}
	spec.Mounts = func(host string) []Mount {
		return []Mount{{Source: input, Destination: "/opt/ml/input", ReadOnly: true}}
	}
	j := start(t, spec)
	_, gw, gwHits := listen(t, netip.AddrPortFrom(bridgeAddr(t, j), 0).String())

	svcOK, svcNo := ContainerAddr(loopOK), ContainerAddr(loopNo)
	script := fmt.Sprintf("dial %s via-dnat\ndial %s direct\ndial %s forwarded\nreach %s %s %s %s %s\n",
		svcOK, localOK, farOK, svcNo, localNo, farNo, gw, loopOK)
	if err := writeScript(filepath.Join(input, "go"), script); err != nil {
		t.Fatal(err)
	}
	res := wait(t, j, 30*time.Second)
	if r := res[0]; r.ExitCode != 0 || r.Err != nil {
		t.Errorf("result %+v", r)
	}
	log := readLog(t, spec, "algo-1")
	wantLines(t, log,
		fmt.Sprintf("dialed %s got %q", svcOK, "echo via-dnat"),
		fmt.Sprintf("dialed %s got %q", localOK, "echo direct"),
		fmt.Sprintf("dialed %s got %q", farOK, "echo forwarded"),
		fmt.Sprintf("reach %s fail", svcNo), fmt.Sprintf("reach %s fail", localNo),
		fmt.Sprintf("reach %s fail", farNo), fmt.Sprintf("reach %s fail", gw),
		fmt.Sprintf("reach %s fail", loopOK))
	for name, n := range map[string]*atomic.Int32{"loopback": loopOKHits, "local": localOKHits, "outside": farOKHits} {
		if n.Load() != 1 {
			t.Errorf("allowed %s listener: %d connections, want 1", name, n.Load())
		}
	}
	for name, n := range map[string]*atomic.Int32{"loopback": loopNoHits, "local": localNoHits, "outside": farNoHits, "bridge": gwHits} {
		if n.Load() != 0 {
			t.Errorf("forbidden %s listener: %d connections", name, n.Load())
		}
	}
}

// TestCredentials: the hosts reach the caller's credentials endpoint, a
// loopback listener on any port, as ServiceAddr:80, next to an allowed
// loopback endpoint, and reach it by no other address.
func TestCredentials(t *testing.T) {
	needRunc(t)
	_, creds, credsHits := listen(t, "127.0.0.1:0")
	_, api, apiHits := listen(t, "127.0.0.1:0")
	input := t.TempDir()
	spec := baseSpec(t, "script", "/opt/ml/input/go")
	spec.Network = Endpoint
	spec.Allow = []netip.AddrPort{api}
	spec.Credentials = creds
	spec.Mounts = func(host string) []Mount {
		return []Mount{{Source: input, Destination: "/opt/ml/input", ReadOnly: true}}
	}
	j := start(t, spec)
	svc := netip.AddrPortFrom(ServiceAddr, CredentialsPort)
	raw := netip.AddrPortFrom(ServiceAddr, creds.Port()) // the listener's own port is not DNAT-ed
	script := fmt.Sprintf("dial %s creds\ndial %s api\nreach %s %s\n", svc, ContainerAddr(api), raw, creds)
	if err := writeScript(filepath.Join(input, "go"), script); err != nil {
		t.Fatal(err)
	}
	if r := wait(t, j, 30*time.Second)[0]; r.ExitCode != 0 || r.Err != nil {
		t.Errorf("result %+v", r)
	}
	wantLines(t, readLog(t, spec, "algo-1"),
		fmt.Sprintf("dialed %s got %q", svc, "echo creds"),
		fmt.Sprintf("dialed %s got %q", ContainerAddr(api), "echo api"),
		fmt.Sprintf("reach %s fail", raw), fmt.Sprintf("reach %s fail", creds))
	if credsHits.Load() != 1 || apiHits.Load() != 1 {
		t.Errorf("connections: credentials endpoint %d, allowed endpoint %d; want 1 and 1", credsHits.Load(), apiHits.Load())
	}

	// An isolated job gets no credentials endpoint.
	iso := baseSpec(t, "exit", "0")
	iso.Credentials = creds
	if _, err := testLocal.Start(context.Background(), iso); err == nil || !strings.Contains(err.Error(), "endpoint policy") {
		t.Errorf("isolated job with a credentials endpoint: %v", err)
	}
}

func TestSignal(t *testing.T) {
	needRunc(t)
	t.Run("SIGTERM", func(t *testing.T) {
		model := t.TempDir()
		spec := baseSpec(t, "sleep", "/opt/ml/model/terminated")
		spec.Mounts = func(string) []Mount { return []Mount{{Source: model, Destination: "/opt/ml/model"}} }
		j := start(t, spec)
		waitLog(t, spec, "algo-1", "sleeping")
		t0 := time.Now()
		if err := j.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		res := wait(t, j, 10*time.Second)
		t.Logf("SIGTERM to exit: %v", time.Since(t0).Round(time.Millisecond))
		if r := res[0]; r.ExitCode != 7 || r.Err != nil {
			t.Errorf("result %+v, want exit 7", r)
		}
		if b, err := os.ReadFile(filepath.Join(model, "terminated")); err != nil || string(b) != "got SIGTERM\n" {
			t.Errorf("marker %q %v", b, err)
		}
		if err := j.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("signal after exit: %v", err)
		}
	})
	t.Run("SIGKILL", func(t *testing.T) {
		spec := baseSpec(t, "ignore-term")
		j := start(t, spec)
		waitLog(t, spec, "algo-1", "ignoring SIGTERM")
		if err := j.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := j.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a process that ignores SIGTERM exited: %v", err)
		}
		if err := j.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		res := wait(t, j, 10*time.Second)
		if r := res[0]; r.ExitCode != 137 || r.Signal != "SIGKILL" {
			t.Errorf("result %+v, want 137 SIGKILL", r)
		}
	})
}

func TestConcurrentStart(t *testing.T) {
	needRunc(t)
	const n = 4
	jobs := make([]*localJob, n)
	errs := make([]error, n)
	done := make(chan int)
	for i := range n {
		spec := baseSpec(t, "exit", "0")
		go func() {
			j, err := testLocal.Start(context.Background(), spec)
			if err == nil {
				jobs[i] = j.(*localJob)
				t.Cleanup(func() { j.Cleanup() })
			}
			errs[i] = err
			done <- i
		}()
	}
	for range n {
		<-done
	}
	subnets, bridges := map[netip.Prefix]bool{}, map[string]bool{}
	for i, j := range jobs {
		if errs[i] != nil {
			t.Fatalf("start %d: %v", i, errs[i])
		}
		subnets[j.m.Subnet], bridges[j.BridgeName()] = true, true
		if r := wait(t, j, 10*time.Second); r[0].ExitCode != 0 {
			t.Errorf("job %d: %+v", i, r[0])
		}
	}
	if len(subnets) != n || len(bridges) != n {
		t.Errorf("%d jobs share subnets or bridges: %v %v", n, subnets, bridges)
	}
}

// leftovers lists what of m still exists.
func leftovers(t *testing.T, l *Local, m manifest) []string {
	t.Helper()
	var left []string
	for _, name := range append([]string{m.Bridge}, vethNames(m)...) {
		if _, err := netlink.LinkByName(name); err == nil {
			left = append(left, "link "+name)
		}
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == m.Table {
			left = append(left, "nftables table "+tb.Name)
		}
	}
	for _, h := range m.Hosts {
		if _, err := os.Stat(filepath.Join(l.runc.root, h.Container)); err == nil {
			left = append(left, "container "+h.Container)
		}
	}
	if points, _ := mountsUnder(l.jobDir(m.ID)); len(points) > 0 {
		left = append(left, points...)
	}
	if _, err := os.Stat(l.jobDir(m.ID)); err == nil {
		left = append(left, "dir "+l.jobDir(m.ID))
	}
	return left
}

func vethNames(m manifest) []string {
	var out []string
	for _, h := range m.Hosts {
		out = append(out, h.Veth)
	}
	return out
}

func TestCleanup(t *testing.T) {
	needRunc(t)
	spec := baseSpec(t, "ignore-term")
	spec.Hosts = 2
	spec.Network = Endpoint
	spec.Allow = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}
	j := start(t, spec)
	m := j.m
	if left := leftovers(t, testLocal, m); len(left) < 6 {
		t.Fatalf("a running job should have a bridge, veths, table, containers, mounts: %v", left)
	}
	t0 := time.Now()
	if err := j.Cleanup(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cleanup of 2 running hosts took %v", time.Since(t0).Round(time.Millisecond))
	if left := leftovers(t, testLocal, m); len(left) > 0 {
		t.Errorf("left after cleanup: %v", left)
	}
	if err := j.Cleanup(); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
	res := wait(t, j, time.Second)
	if res[0].Signal != "SIGKILL" {
		t.Errorf("cleanup of a running host: %+v", res[0])
	}
}

func TestReap(t *testing.T) {
	needRunc(t)
	keepSpec := baseSpec(t, "ignore-term")
	kept := start(t, keepSpec)
	lostSpec := baseSpec(t, "ignore-term")
	lostSpec.Hosts = 2
	lost := start(t, lostSpec)
	waitLog(t, lostSpec, "algo-2", "ignoring SIGTERM")

	// A crash of convoy: runc processes die, containers live on, the new
	// process knows only what the caller tracked.
	var pids []int
	for _, h := range lost.hosts {
		b, err := os.ReadFile(filepath.Join(h.dir, "pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		pids = append(pids, pid)
		h.cmd.Process.Kill()
	}
	wait(t, lost, 5*time.Second)
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err != nil {
			t.Fatalf("container process %d died with runc: %v", pid, err)
		}
	}
	restarted, err := NewLocal(testStateDir, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := restarted.Reap(map[string]bool{keepSpec.ID: true}); err != nil {
		t.Fatal(err)
	}
	t.Logf("reap of a 2-host job took %v", time.Since(t0).Round(time.Millisecond))
	if left := leftovers(t, testLocal, lost.m); len(left) > 0 {
		t.Errorf("left after reap: %v", left)
	}
	for _, pid := range pids {
		deadline := time.Now().Add(5 * time.Second)
		for !processGone(pid) {
			if time.Now().After(deadline) {
				t.Errorf("container process %d survived the reap", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The kept job is untouched.
	if left := leftovers(t, testLocal, kept.m); len(left) < 4 {
		t.Errorf("kept job lost parts: only %v", left)
	}
	if kept.hosts[0].exited() {
		t.Error("kept job's host exited")
	}
}

// processGone reports whether pid has exited (a zombie counts).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z") || strings.HasPrefix(rest, "X")
}

// BenchmarkStart measures a job's life: Start (network, overlays, runc up
// to a running process), the run of a process that exits at once, and
// Cleanup.
func BenchmarkStart(b *testing.B) {
	if skipReason != "" {
		b.Skip(skipReason)
	}
	for _, hosts := range []int{1, 4} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			var start, run, cleanup time.Duration
			for i := 0; i < b.N; i++ {
				spec := JobSpec{
					ID: fmt.Sprintf("b%d-%d", os.Getpid()%10000, jobSeq.Add(1)), Hosts: hosts,
					RootFS: testRootFS, Args: []string{"/bin/probe", "exit", "0"}, LogDir: b.TempDir(),
				}
				t0 := time.Now()
				j, err := testLocal.Start(context.Background(), spec)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := j.Wait(context.Background()); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if err := j.Cleanup(); err != nil {
					b.Fatal(err)
				}
				start, run, cleanup = start+t1.Sub(t0), run+t2.Sub(t1), cleanup+time.Since(t2)
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(ms(start), "start-ms/op")
			b.ReportMetric(ms(run), "run-ms/op")
			b.ReportMetric(ms(cleanup), "cleanup-ms/op")
		})
	}
}

// TestExpose: the caller connects to a host's exposed port (a model
// server's 8080) from a socket marked ExposeMark, but not from an unmarked
// one and not to a port that is not exposed, and the hosts still reach
// nothing of the caller's.
func TestExpose(t *testing.T) {
	needRunc(t)
	_, loop, loopHits := listen(t, "127.0.0.1:0")
	inputs := map[string]string{"algo-1": t.TempDir(), "algo-2": t.TempDir()}
	spec := baseSpec(t, "script", "/opt/ml/input/go")
	spec.Hosts = 2
	spec.Expose = []uint16{8080}
	spec.Mounts = func(host string) []Mount {
		return []Mount{{Source: inputs[host], Destination: "/opt/ml/input", ReadOnly: true}}
	}
	j := start(t, spec)
	_, gw, gwHits := listen(t, netip.AddrPortFrom(bridgeAddr(t, j), 0).String())
	reach := fmt.Sprintf("reach %s %s %s\n", gw, loop, ContainerAddr(loop))
	// algo-1 serves the exposed port, then lets algo-2 go; algo-2 serves a
	// port that is not exposed.
	for host, script := range map[string]string{
		"algo-1": reach + "serve 8080\ndial algo-2:9090 bye\n",
		"algo-2": reach + "serve 9090\n",
	} {
		if err := writeScript(filepath.Join(inputs[host], "go"), script); err != nil {
			t.Fatal(err)
		}
	}
	waitLog(t, spec, "algo-1", "serving [::]:8080")
	waitLog(t, spec, "algo-2", "serving [::]:9090")
	addrs := j.Addrs()
	if len(addrs) != 2 || addrs["algo-1"] != hostAddrOf(j.m.Subnet, 0) {
		t.Fatalf("Addrs %v", addrs)
	}
	if c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(addrs["algo-2"], 9090).String(), 2*time.Second); err == nil {
		c.Close()
		t.Error("the caller connected to a port that is not exposed")
	}
	// Without ExposeMark on its socket, not even the exposed port: any
	// process of the caller's namespace could do that.
	if c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(addrs["algo-1"], 8080).String(), 2*time.Second); err == nil {
		c.Close()
		t.Error("an unmarked socket of the caller's namespace connected to the exposed port")
	}
	d := net.Dialer{Timeout: 5 * time.Second, Control: DialExposed}
	c, err := d.Dial("tcp4", netip.AddrPortFrom(addrs["algo-1"], 8080).String())
	if err != nil {
		t.Fatalf("the caller cannot connect to the exposed port: %v", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "from-the-caller\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if line != "echo from-the-caller\n" {
		t.Fatalf("exposed port answered %q %v", line, err)
	}
	for _, r := range wait(t, j, 30*time.Second) {
		if r.ExitCode != 0 || r.Err != nil {
			t.Errorf("result %+v", r)
		}
	}
	for _, host := range j.Hosts() {
		wantLines(t, readLog(t, spec, host), fmt.Sprintf("reach %s fail", gw), fmt.Sprintf("reach %s fail", loop),
			fmt.Sprintf("reach %s fail", ContainerAddr(loop)))
	}
	wantLines(t, readLog(t, spec, "algo-2"), `served "bye" from`)
	if loopHits.Load() != 0 || gwHits.Load() != 0 {
		t.Errorf("hosts connected to the caller: loopback %d, bridge %d", loopHits.Load(), gwHits.Load())
	}
}
