package mesh

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func diagMsg(family, state uint8, port uint16, addr netip.Addr) []byte {
	b := make([]byte, sizeofDiagMsg)
	b[0], b[1] = family, state
	binary.BigEndian.PutUint16(b[4:], port)
	copy(b[8:], addr.AsSlice())
	return b
}

func TestParseDiagMsg(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.213.5.2"), netip.MustParseAddr("::ffff:10.213.5.2")
	for _, tc := range []struct {
		msg  []byte
		port uint16
		addr netip.Addr
	}{
		{diagMsg(unix.AF_INET, tcpListenState, 7777, v4), 7777, v4},
		{diagMsg(unix.AF_INET6, tcpListenState, 22, v6), 22, v6},
		{diagMsg(unix.AF_INET, 1, 7777, v4), 0, netip.Addr{}},                   // established
		{diagMsg(unix.AF_INET, tcpListenState, 0, v4), 0, netip.Addr{}},         // port 0
		{diagMsg(unix.AF_UNIX, tcpListenState, 7777, v4), 0, netip.Addr{}},      // family
		{diagMsg(unix.AF_INET, tcpListenState, 7777, v4)[:40], 0, netip.Addr{}}, // short
	} {
		port, addr, err := parseDiagMsg(tc.msg)
		if (err == nil) != (tc.port != 0) || port != tc.port || addr != tc.addr {
			t.Errorf("message %x: %d %s %v", tc.msg[:12], port, addr, err)
		}
	}
}

// The kernel agrees: a listener this test opens is found, on every
// address and on the given one, and a loopback-only one is not.
func TestListeningPortsLive(t *testing.T) {
	all, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	lo, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lo.Close()
	got, err := listeningPorts(netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, uint16(all.Addr().(*net.TCPAddr).Port)) {
		t.Errorf("listener on every address not found among %v", got)
	}
	if slices.Contains(got, uint16(lo.Addr().(*net.TCPAddr).Port)) {
		t.Errorf("loopback listener reported as reachable: %v", got)
	}
	self, err := listeningPorts(netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(self, uint16(lo.Addr().(*net.TCPAddr).Port)) {
		t.Errorf("listener on self (127.0.0.1 here) not found among %v", self)
	}
	if !slices.IsSorted(got) {
		t.Errorf("not sorted: %v", got)
	}
}

func FuzzParseDiagMsg(f *testing.F) {
	f.Add(diagMsg(unix.AF_INET, tcpListenState, 7777, netip.MustParseAddr("10.0.0.2")))
	f.Add(diagMsg(unix.AF_INET6, tcpListenState, 22, netip.IPv6Unspecified()))
	f.Fuzz(func(t *testing.T, b []byte) {
		port, addr, err := parseDiagMsg(b)
		if err != nil {
			return
		}
		if port == 0 || !addr.IsValid() || len(b) < sizeofDiagMsg {
			t.Fatalf("accepted %x as port %d at %s", b, port, addr)
		}
	})
}
