package executor

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Confinement: cross-job reachability, image-controlled working
// directory, IPv6 and masked paths inside a container.

// TestCrossJobIsolation: a host of one job reaches neither the hosts of
// another job, nor that job's bridge address, nor that job's credentials
// endpoint, whatever the network policy of either.
func TestCrossJobIsolation(t *testing.T) {
	needRunc(t)
	out := newOutside(t)
	farOK, _ := out.listen(t)
	_, credsB, credsBHits := listen(t, "127.0.0.1:0")

	inB := t.TempDir()
	specB := baseSpec(t, "script", "/opt/ml/input/go")
	specB.Network = Endpoint
	specB.Credentials = credsB
	specB.Mounts = func(string) []Mount { return []Mount{{Source: inB, Destination: "/opt/ml/input", ReadOnly: true}} }
	jB := start(t, specB)
	if err := writeScript(filepath.Join(inB, "go"), "serve 6000\n"); err != nil {
		t.Fatal(err)
	}
	waitLog(t, specB, "algo-1", "serving")
	hostB := netip.AddrPortFrom(hostAddrOf(jB.m.Subnet, 0), 6000)
	_, gwB, gwBHits := listen(t, netip.AddrPortFrom(bridgeAddr(t, jB), 0).String())

	inA := t.TempDir()
	specA := baseSpec(t, "script", "/opt/ml/input/go")
	specA.Network = Endpoint // forwarding on for A's bridge
	specA.Allow = []netip.AddrPort{farOK}
	specA.Mounts = func(string) []Mount { return []Mount{{Source: inA, Destination: "/opt/ml/input", ReadOnly: true}} }
	jA := start(t, specA)
	script := fmt.Sprintf("reach %s %s %s %s\n", hostB, gwB, netip.AddrPortFrom(ServiceAddr, CredentialsPort), credsB)
	if err := writeScript(filepath.Join(inA, "go"), script); err != nil {
		t.Fatal(err)
	}
	wait(t, jA, 30*time.Second)
	log := readLog(t, specA, "algo-1")
	t.Logf("job A:\n%s", log)
	for _, ap := range []string{hostB.String(), gwB.String(), credsB.String(), netip.AddrPortFrom(ServiceAddr, CredentialsPort).String()} {
		if strings.Contains(log, "reach "+ap+" ok") {
			t.Errorf("a host of job A reached %s (job B)", ap)
		}
	}
	if gwBHits.Load() != 0 || credsBHits.Load() != 0 {
		t.Errorf("job B listeners connected to from job A: gateway %d, credentials %d", gwBHits.Load(), credsBHits.Load())
	}
	jB.Signal(9)
}

// TestWorkDirProcFdEscape: an image's WORKDIR is passed to runc as the
// process's cwd. A WORKDIR of /proc/self/fd/N (CVE-2024-21626) must not
// leave the process in a directory of the caller's file system.
func TestWorkDirProcFdEscape(t *testing.T) {
	needRunc(t)
	marker, err := os.CreateTemp("/tmp", "convoy-marker-")
	if err != nil {
		t.Fatal(err)
	}
	marker.WriteString("HOST-SECRET")
	marker.Close()
	defer os.Remove(marker.Name())
	rel := strings.Repeat("../", 12) + strings.TrimPrefix(marker.Name(), "/")
	for fd := 3; fd <= 10; fd++ {
		spec := baseSpec(t, "read", rel)
		spec.WorkDir = fmt.Sprintf("/proc/self/fd/%d", fd)
		j, err := testLocal.Start(context.Background(), spec)
		if err != nil {
			t.Logf("fd %d: start refused: %v", fd, err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, _ := j.Wait(ctx)
		cancel()
		b, _ := os.ReadFile(filepath.Join(spec.LogDir, "algo-1.log"))
		j.Cleanup()
		if strings.Contains(string(b), "HOST-SECRET") {
			t.Errorf("WORKDIR /proc/self/fd/%d: the container read a file of the host: %s", fd, b)
		}
		t.Logf("fd %d: %v %q", fd, res, b)
	}
}

// TestKernelSurfacesClosed: inside a host, IPv6 is off and the masked
// /proc files are empty.
func TestKernelSurfacesClosed(t *testing.T) {
	needRunc(t)
	spec := baseSpec(t, "read", "/proc/sys/net/ipv6/conf/all/disable_ipv6", "--", "read", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
		"--", "read", "/proc/kcore", "--", "read", "/proc/keys", "--", "read", "/sys/firmware",
		"--", "write", "/proc/sys/kernel/core_pattern", "--", "write", "/proc/sysrq-trigger",
		"--", "write", "/sys/fs/cgroup/cgroup.procs", "--", "write", "/dev/shm/x")
	j := start(t, spec)
	wait(t, j, 20*time.Second)
	log := readLog(t, spec, "algo-1")
	t.Logf("log:\n%s", log)
	wantLines(t, log,
		`read /proc/sys/net/ipv6/conf/all/disable_ipv6: "1\n"`,
		`read /proc/kcore: ""`, // masked, or absent from this kernel
		"write /proc/sys/kernel/core_pattern denied", "write /proc/sysrq-trigger denied",
		"write /sys/fs/cgroup/cgroup.procs denied")
}
