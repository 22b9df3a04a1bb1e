// Package meshtest builds, for the tests and benchmarks of internal/mesh,
// the network the executor gives a distributed job, without containers: a
// Linux bridge in the caller's network namespace and, per host, a network
// namespace with eth0 on a veth pair attached to it. Everything it creates
// is removed when the test ends. It needs root and iproute2.
package meshtest

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"

	"convoy/internal/executor"
)

// Network is a job network: Subnet's first address is on the bridge, host
// i (0-based) has the address i+2.
type Network struct {
	Job    string
	Bridge string
	Subnet netip.Prefix
	Hosts  []*Host
	prefix string
	extra  int
}

// Host is one network namespace on the bridge.
type Host struct {
	Name  string // algo-1 …
	Netns string // path of the namespace (a /run/netns file)
	Addr  netip.Addr
	// Dir is a private directory for the host (HostNet.Dir).
	Dir string
}

var seq atomic.Int32

// Require fails the test unless it runs as root with ip and nsenter.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		// Not a skip: CI runs as root, so this is a broken environment.
		t.Fatal("needs root (network namespaces, nftables): run the tests as root")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (apt-get install iproute2 util-linux)", tool)
		}
	}
}

// New creates a network for a job of n hosts, in 10.215.X.0/24 with X
// chosen from the process and a counter, so that concurrent test
// processes do not collide.
func New(t testing.TB, n int) *Network {
	t.Helper()
	Require(t)
	k := int(seq.Add(1))
	x := (os.Getpid()*7 + k) % 250
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, k)
	nw := &Network{
		Job:    "meshtest-" + id,
		Bridge: fmt.Sprintf("cvm%x", (os.Getpid()%0xffff)<<8|k&0xff),
		Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 215, byte(x), 0}), 24),
		prefix: "cvmt-" + id,
	}
	run(t, "ip", "link", "add", nw.Bridge, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", nw.Bridge).Run() })
	run(t, "ip", "addr", "add", nth(nw.Subnet, 1).String()+"/24", "dev", nw.Bridge)
	run(t, "ip", "link", "set", nw.Bridge, "up")
	for i := range n {
		nw.Hosts = append(nw.Hosts, nw.attach(t, executor.HostName(i), nth(nw.Subnet, i+2)))
	}
	return nw
}

func nth(p netip.Prefix, i int) netip.Addr {
	b := p.Addr().As4()
	b[3] = byte(i)
	return netip.AddrFrom4(b)
}

// Attach adds a namespace with address addr to the bridge that is no host
// of the job: an intruder, which may well claim a host's address.
func (nw *Network) Attach(t testing.TB, addr netip.Addr) *Host {
	t.Helper()
	nw.extra++
	return nw.attach(t, fmt.Sprintf("extra-%d", nw.extra), addr)
}

func (nw *Network) attach(t testing.TB, name string, addr netip.Addr) *Host {
	t.Helper()
	ns := nw.prefix + "-" + strings.TrimPrefix(name, "algo-")
	veth := fmt.Sprintf("%s%d", nw.Bridge, len(nw.Hosts)+nw.extra)
	if len(veth) > 15 {
		t.Fatalf("interface name %s too long", veth)
	}
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", veth).Run() })
	run(t, "ip", "link", "set", veth, "master", nw.Bridge, "up")
	// IPv6 off, as the executor does in a job's namespaces.
	for _, key := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		run(t, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", key+"=1")
	}
	for _, args := range [][]string{
		{"addr", "add", addr.String() + "/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "lo", "up"},
	} {
		run(t, "ip", append([]string{"-n", ns}, args...)...)
	}
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return &Host{Name: name, Netns: "/run/netns/" + ns, Addr: addr, Dir: dir}
}

// HostNet is host i as the executor hands it to HostSetup.
func (nw *Network) HostNet(i int) executor.HostNet {
	peers := map[string]netip.Addr{}
	for _, h := range nw.Hosts {
		peers[h.Name] = h.Addr
	}
	h := nw.Hosts[i]
	return executor.HostNet{Job: nw.Job, Host: h.Name, Netns: h.Netns, Dir: h.Dir, Addr: h.Addr, Subnet: nw.Subnet, Peers: peers}
}

// Do runs f on an OS thread inside the host's namespace: sockets f opens
// belong to the host.
func (h *Host) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.GetFromPath(h.Netns)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		err = f()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread() // otherwise the thread dies with the goroutine
		}
		errc <- err
	}()
	return <-errc
}

// Command returns cmd to run inside the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + h.Netns, "--", name}, args...)...)
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
