package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Socket marks of the agent. A container has no CAP_NET_ADMIN, so it can
// set neither, and everything it sends has mark 0.
const (
	markBase = 0x4d455300 // "MES\0"
	// markAgent is on the agent's tunnels and listeners.
	markAgent = markBase | 1
	// markTransparent is on the connections an agent makes, on behalf of
	// a peer, to the host's own applications, from the peer's address.
	markTransparent = markBase | 2
	// markLocal steers the applications' replies on those connections
	// back to the agent (policy routing to lo) instead of out of eth0.
	markLocal = markBase | 3
	// localTable is the routing table markLocal selects.
	localTable = 0x4d45
)

const tableName = "convoy-mesh"

// Named counters of the table, read by the agent.
const (
	counterUDP     = "dropped-udp"
	counterICMP    = "dropped-icmp"
	counterOther   = "dropped-other"
	counterInbound = "dropped-inbound"
	counterRefused = "refused-tcp"
)

// rules are the nftables table and routing of one host's network
// namespace. Outbound, the host's TCP connections to a port a peer
// listens on are redirected to the agent (set "open", kept by the agent);
// TCP to any other port of a peer is refused at once (ECONNREFUSED, as
// the peer itself would answer); anything else to the job's network or to
// a broadcast or multicast address is counted and dropped. Inbound from
// the job's network, only the agents' tunnels pass. Everything the agent
// itself sends carries its socket mark and is exempt.
type rules struct {
	self   netip.Addr
	subnet netip.Prefix
	peers  []netip.Addr // the other hosts
}

func tableRef() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
}

func openSetRef() *nftables.Set {
	return &nftables.Set{Table: tableRef(), Name: "open",
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService), Concatenation: true}
}

// withNetns runs f with an nftables connection and a netlink handle into
// the network namespace at path.
func withNetns(path string, f func(c *nftables.Conn, h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return fmt.Errorf("nftables in %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	return f(c, h)
}

// install puts the rules in place in the namespace at path: the table in
// one netlink batch, then the routing of markLocal.
func (r rules) install(path string) error {
	return withNetns(path, func(c *nftables.Conn, h *netlink.Handle) error {
		if err := r.addTable(c); err != nil {
			return fmt.Errorf("install nftables table %s: %w", tableName, err)
		}
		rule := netlink.NewRule()
		rule.Mark, rule.Table, rule.Family = markLocal, localTable, unix.AF_INET
		mask := uint32(0xffffffff)
		rule.Mask = &mask
		if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add routing rule for mark %#x: %w", markLocal, err)
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		route := &netlink.Route{
			LinkIndex: lo.Attrs().Index, Table: localTable, Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
		if err := h.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add local route in table %d: %w", localTable, err)
		}
		return nil
	})
}

func (r rules) addTable(c *nftables.Conn) error {
	t := c.AddTable(tableRef())
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	add := func(ch *nftables.Chain, parts ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: slices.Concat(parts...)})
	}
	for _, name := range []string{counterUDP, counterICMP, counterOther, counterInbound, counterRefused} {
		c.AddObj(&nftables.NamedObj{Table: t, Name: name, Type: nftables.ObjTypeCounter, Obj: &expr.Counter{}})
	}
	peers := &nftables.Set{Table: t, Name: "peers", KeyType: nftables.TypeIPAddr}
	var elems []nftables.SetElement
	for _, p := range r.peers {
		elems = append(elems, nftables.SetElement{Key: p.AsSlice()})
	}
	if err := c.AddSet(peers, elems); err != nil {
		return err
	}
	open := openSetRef()
	open.Table = t
	if err := c.AddSet(open, nil); err != nil {
		return err
	}

	acceptV := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	dropCounting := func(counter string) []expr.Any {
		return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counter}, &expr.Verdict{Kind: expr.VerdictDrop}}
	}

	// Steer replies to the agent's transparent connections back to it.
	route := chain("route-out", nftables.ChainTypeRoute, nftables.ChainHookOutput, nftables.ChainPriorityMangle)
	add(route, matchMark(markTransparent), []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(markTransparent)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	})
	add(route, matchMark(0), matchCtMark(markTransparent), []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(markLocal)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	})

	// The host's TCP to a peer's open port goes to the agent.
	nat := chain("nat-out", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	add(nat, matchMark(0), matchIPv4(), matchL4(unix.IPPROTO_TCP), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: open.Name, SetID: open.ID},
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(RedirectPort)},
		&expr.Redir{RegisterProtoMin: 1},
	})

	out := chain("filter-out", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
	add(out, matchLoopback(expr.MetaKeyOIF), acceptV)
	add(out, matchMark(markAgent), acceptV)
	add(out, matchMark(markTransparent), acceptV)
	// Replies route-out steered to lo: this hook still sees them as
	// leaving by eth0 (the hook's output device is fixed before the
	// reroute).
	add(out, matchMark(markLocal), acceptV)
	add(out, matchNFProto(unix.NFPROTO_IPV6), dropCounting(counterOther))
	add(out, matchIPv4(), matchL4(unix.IPPROTO_TCP), matchAddrInSet(16, peers), []expr.Any{
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: counterRefused},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	})
	for _, p := range []netip.Prefix{r.subnet, netip.MustParsePrefix("224.0.0.0/4"), netip.MustParsePrefix("255.255.255.255/32")} {
		add(out, matchIPv4(), matchPrefix(16, p), matchL4(unix.IPPROTO_UDP), dropCounting(counterUDP))
		add(out, matchIPv4(), matchPrefix(16, p), matchL4(unix.IPPROTO_ICMP), dropCounting(counterICMP))
		add(out, matchIPv4(), matchPrefix(16, p), dropCounting(counterOther))
	}

	in := chain("filter-in", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	add(in, matchLoopback(expr.MetaKeyIIF), acceptV)
	add(in, matchNFProto(unix.NFPROTO_IPV6), dropCounting(counterInbound))
	add(in, matchIPv4(), matchPrefix(12, r.subnet), matchAddr(16, r.self), matchL4(unix.IPPROTO_TCP), matchPort(2, TunnelPort), acceptV)
	add(in, matchIPv4(), matchPrefix(12, r.subnet), matchL4(unix.IPPROTO_TCP), matchPort(0, TunnelPort), matchCtState(expr.CtStateBitESTABLISHED), acceptV)
	add(in, matchIPv4(), matchPrefix(12, r.subnet), dropCounting(counterInbound))
	add(in, matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), acceptV)
	add(in, dropCounting(counterInbound))
	return c.Flush()
}

func matchMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)},
	}
}

func matchCtMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(m)},
	}
}

func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

func matchNFProto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func matchIPv4() []expr.Any { return matchNFProto(unix.NFPROTO_IPV4) }

func matchL4(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// matchLoopback matches lo as the input (MetaKeyIIF) or output
// (MetaKeyOIF) interface: index 1 in every network namespace, a cheaper
// comparison than its name.
func matchLoopback(key expr.MetaKey) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(1)},
	}
}

// matchPort matches the TCP source (offset 0) or destination (2) port.
func matchPort(offset uint32, p uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

// matchAddr matches the IPv4 source (offset 12) or destination (16).
func matchAddr(offset uint32, a netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a.AsSlice()},
	}
}

func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	mask := make([]byte, 4)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func matchAddrInSet(offset uint32, s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// openKey is the "open" set's key for port p of a: address, port, and
// two bytes of padding to the register size.
func openKey(a netip.Addr, p uint16) []byte {
	k := make([]byte, 8)
	copy(k, a.AsSlice())
	copy(k[4:], binaryutil.BigEndian.PutUint16(p))
	return k
}

// setOpenPorts replaces, in the caller's own network namespace, the ports
// of peer a in the "open" set: add and del are the changes.
func setOpenPorts(c *nftables.Conn, a netip.Addr, add, del []uint16) error {
	s := openSetRef()
	if len(del) > 0 {
		var elems []nftables.SetElement
		for _, p := range del {
			elems = append(elems, nftables.SetElement{Key: openKey(a, p)})
		}
		if err := c.SetDeleteElements(s, elems); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		var elems []nftables.SetElement
		for _, p := range add {
			elems = append(elems, nftables.SetElement{Key: openKey(a, p)})
		}
		if err := c.SetAddElements(s, elems); err != nil {
			return err
		}
	}
	return c.Flush()
}

// dropCounts reads the table's counters of dropped packets.
type dropCounts struct{ UDP, ICMP, Other, Inbound, Refused uint64 }

func (d dropCounts) outbound() uint64 { return d.UDP + d.ICMP + d.Other }

func readCounts(c *nftables.Conn) (dropCounts, error) {
	var d dropCounts
	for name, dst := range map[string]*uint64{
		counterUDP: &d.UDP, counterICMP: &d.ICMP, counterOther: &d.Other, counterInbound: &d.Inbound, counterRefused: &d.Refused,
	} {
		o, err := c.GetObject(&nftables.NamedObj{Table: tableRef(), Name: name, Type: nftables.ObjTypeCounter})
		if err != nil {
			return d, fmt.Errorf("read counter %s: %w", name, err)
		}
		if n, ok := o.(*nftables.NamedObj); ok {
			if ctr, ok := n.Obj.(*expr.Counter); ok {
				*dst = ctr.Packets
			}
		}
	}
	return d, nil
}
