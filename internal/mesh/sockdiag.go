package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// listeningPorts returns, ascending and without duplicates, the TCP ports
// on which this network namespace listens on self or on every address:
// the ports a peer's connection can reach. Ports that listen on loopback
// only are left out.
//
// It asks the kernel through sock_diag (NETLINK_INET_DIAG) for listening
// sockets only. /proc/net/tcp would be simpler, but reading it walks the
// whole established-connection hash table of the machine, which all
// network namespaces share: milliseconds of CPU per read on a server, where
// this dump costs microseconds.
func listeningPorts(self netip.Addr) ([]uint16, error) {
	var ports []uint16
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(diagRequest{family: family})
		var perr error
		err := req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
			port, addr, err := parseDiagMsg(msg)
			if err != nil {
				perr = err
				return false
			}
			if addr.IsUnspecified() || addr.Unmap() == self {
				ports = append(ports, port)
			}
			return true
		})
		if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENOENT) {
			continue // no IPv6 in this kernel
		}
		if err = errors.Join(err, perr); err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
			return nil, fmt.Errorf("list listening sockets: %w", err)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

// diagRequest is a struct inet_diag_req_v2 for TCP sockets of family in
// state LISTEN.
type diagRequest struct{ family uint8 }

const (
	sizeofDiagRequest = 56
	sizeofDiagMsg     = 72
	tcpListenState    = 10 // TCP_LISTEN
)

func (r diagRequest) Len() int { return sizeofDiagRequest }

func (r diagRequest) Serialize() []byte {
	b := make([]byte, sizeofDiagRequest)
	b[0], b[1] = r.family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:], 1<<tcpListenState)
	return b
}

// parseDiagMsg reads the local port and address of a struct
// inet_diag_msg: family (1), state (1), timer (1), retrans (1), then
// inet_diag_sockid: source port (2, big endian), destination port (2),
// source address (16), ….
func parseDiagMsg(b []byte) (uint16, netip.Addr, error) {
	if len(b) < sizeofDiagMsg {
		return 0, netip.Addr{}, fmt.Errorf("sock_diag message of %d bytes", len(b))
	}
	if b[1] != tcpListenState {
		return 0, netip.Addr{}, fmt.Errorf("sock_diag returned a socket in state %d, not listening", b[1])
	}
	port := binary.BigEndian.Uint16(b[4:6])
	var a netip.Addr
	switch b[0] {
	case unix.AF_INET:
		a = netip.AddrFrom4([4]byte(b[8:12]))
	case unix.AF_INET6:
		a = netip.AddrFrom16([16]byte(b[8:24]))
	default:
		return 0, netip.Addr{}, fmt.Errorf("sock_diag returned address family %d", b[0])
	}
	if port == 0 {
		return 0, netip.Addr{}, errors.New("sock_diag returned port 0")
	}
	return port, a, nil
}
