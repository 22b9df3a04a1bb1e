package executor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Every job gets one /24 of jobNet: the bridge is .1, algo-i is .(i+1).
var jobNet = netip.MustParsePrefix("10.213.0.0/16")

// subnetOf returns the /24 with third octet x.
func subnetOf(x uint8) netip.Prefix {
	b := jobNet.Addr().As4()
	b[2] = x
	return netip.PrefixFrom(netip.AddrFrom4(b), 24)
}

// nthAddr returns the n-th address of a /24.
func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Addr().As4()
	b[3] = byte(n)
	return netip.AddrFrom4(b)
}

func gatewayOf(p netip.Prefix) netip.Addr         { return nthAddr(p, 1) }
func hostAddrOf(p netip.Prefix, i int) netip.Addr { return nthAddr(p, i+2) } // i is 0-based

// usedSubnets returns the third octets of the /24s in jobNet that an address
// or a route of the caller's namespace already covers, in any table.
func usedSubnets() (map[uint8]bool, error) {
	used := map[uint8]bool{}
	mark := func(p netip.Prefix) {
		p = p.Masked()
		if p.Bits() < jobNet.Bits() || !p.Overlaps(jobNet) {
			return // a default or a wider route: ours is more specific
		}
		if p.Bits() <= 24 {
			first := p.Addr().As4()[2]
			n := 1 << (24 - p.Bits())
			for x := 0; x < n; x++ {
				used[first+uint8(x)] = true
			}
			return
		}
		used[p.Addr().As4()[2]] = true
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			mark(netip.PrefixFrom(ip, 32))
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if p, ok := prefixOf(r.Dst); ok {
			mark(p)
		}
	}
	return used, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip, ones), true
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

// isLocalAddr reports whether a is assigned to an interface of the caller's
// namespace (then the hosts reach it through the input path, no forwarding).
func isLocalAddr(a netip.Addr) (bool, error) {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP.To4()); ok && ip == a {
			return true, nil
		}
	}
	return false, nil
}

// writeSysctl sets a /proc/sys value. A missing IPv6 tree (IPv6 disabled in
// the kernel) is not an error.
func writeSysctl(path, value string) error {
	err := os.WriteFile(path, []byte(value), 0o644)
	if errors.Is(err, os.ErrNotExist) && filepath.Base(filepath.Dir(filepath.Dir(path))) == "ipv6" {
		return nil
	}
	return err
}

func ipv4Conf(dev, key string) string { return filepath.Join("/proc/sys/net/ipv4/conf", dev, key) }
func ipv6Conf(dev, key string) string { return filepath.Join("/proc/sys/net/ipv6/conf", dev, key) }

// newNetns creates a network namespace kept alive by a bind mount on path,
// with IPv6 off (the job network is IPv4 only, so nothing link-local can
// bypass the IPv4 rules).
func newNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: this thread leaves the caller's namespace, and the
		// runtime discards a locked thread when its goroutine returns.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind netns to %s: %w", path, err)
			return
		}
		for _, dev := range []string{"all", "default"} {
			if err := writeSysctl(ipv6Conf(dev, "disable_ipv6"), "1"); err != nil {
				errc <- fmt.Errorf("netns %s: disable ipv6: %w", path, err)
				return
			}
		}
		errc <- nil
	}()
	return <-errc
}

// removeNetns unmounts and removes a namespace file; the namespace itself
// goes when its last process has exited.
func removeNetns(path string) error {
	if err := unmount(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// bridgeConfig is the caller-side end of a job network.
type bridgeConfig struct {
	name, alias string
	subnet      netip.Prefix
	// localnet lets packets from the bridge be DNATed to 127.0.0.1
	// (route_localnet); forward lets them be routed to a remote endpoint.
	localnet, forward bool
}

func createBridge(c bridgeConfig) (int, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.name}}
	if err := netlink.LinkAdd(br); err != nil {
		return 0, fmt.Errorf("add bridge %s: %w", c.name, err)
	}
	link, err := netlink.LinkByName(c.name)
	if err != nil {
		return 0, fmt.Errorf("bridge %s: %w", c.name, err)
	}
	if err := netlink.LinkSetAlias(link, c.alias); err != nil {
		return 0, fmt.Errorf("bridge %s: alias: %w", c.name, err)
	}
	bool01 := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	for path, v := range map[string]string{
		ipv6Conf(c.name, "disable_ipv6"):   "1",
		ipv4Conf(c.name, "route_localnet"): bool01(c.localnet),
		ipv4Conf(c.name, "forwarding"):     bool01(c.forward),
	} {
		if err := writeSysctl(path, v); err != nil {
			return 0, fmt.Errorf("bridge %s: %w", c.name, err)
		}
	}
	gw := &netlink.Addr{IPNet: ipNet(gatewayOf(c.subnet), 24)}
	if err := netlink.AddrAdd(link, gw); err != nil {
		return 0, fmt.Errorf("bridge %s: add %s: %w", c.name, gw.IPNet, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return 0, fmt.Errorf("bridge %s: up: %w", c.name, err)
	}
	return link.Attrs().Index, nil
}

// vethConfig is one host's link: name on the bridge side, eth0 inside.
type vethConfig struct {
	name, alias string
	bridge      int // bridge ifindex
	netns       string
	addr        netip.Addr // eth0's address in the job's /24
	gateway     netip.Addr // default route, if valid
}

func createVeth(c vethConfig) error {
	ns, err := netns.GetFromPath(c.netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", c.netns, err)
	}
	defer ns.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: c.name, MasterIndex: c.bridge},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(v); err != nil {
		return fmt.Errorf("add veth %s: %w", c.name, err)
	}
	link, err := netlink.LinkByName(c.name)
	if err != nil {
		return fmt.Errorf("veth %s: %w", c.name, err)
	}
	if err := netlink.LinkSetAlias(link, c.alias); err != nil {
		return fmt.Errorf("veth %s: alias: %w", c.name, err)
	}
	if err := writeSysctl(ipv6Conf(c.name, "disable_ipv6"), "1"); err != nil {
		return fmt.Errorf("veth %s: %w", c.name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("veth %s: up: %w", c.name, err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", c.netns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("netns %s: lo: %w", c.netns, err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("netns %s: eth0: %w", c.netns, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(c.addr, 24)}); err != nil {
		return fmt.Errorf("netns %s: eth0 address: %w", c.netns, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("netns %s: eth0 up: %w", c.netns, err)
	}
	if c.gateway.IsValid() {
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: c.gateway.AsSlice()}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("netns %s: default route: %w", c.netns, err)
		}
	}
	return nil
}

// deleteLink removes a link of the caller's namespace if it exists (a veth
// takes its peer with it).
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find link %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// egressDevice names the interface the caller's namespace routes a to.
func egressDevice(a netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(a.AsSlice())
	if err != nil {
		return "", err
	}
	if len(routes) == 0 {
		return "", fmt.Errorf("no route to %s", a)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", err
	}
	return link.Attrs().Name, nil
}
