package executor

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// firewall is the nftables table of one job, in the caller's namespace.
//
// Traffic between the hosts is bridged and never leaves the bridge. Whatever
// the hosts send to the bridge's IP layer — the caller's namespace itself or
// beyond it — is dropped unless it is a TCP connection to an allowed
// endpoint:
//
//   - loopback (127.0.0.1:p): the hosts dial ServiceAddr:p, which prerouting
//     DNATs to 127.0.0.1:p (the bridge has route_localnet) and input accepts;
//     the credentials endpoint (JobSpec.Credentials, 127.0.0.1:q) likewise
//     from ServiceAddr:80;
//   - an address of the caller's namespace: input accepts it as is;
//   - any other address: forward accepts it and postrouting masquerades it
//     behind the caller's address (the bridge has forwarding on).
//
// Nothing may enter the job network except replies and connections from
// the caller's namespace to the hosts' exposed ports (JobSpec.Expose) on
// sockets marked ExposeMark: the caller's namespace can capture on the
// bridge but connect to nothing else. Drops are final in
// nftables whatever other tables accept, so a permissive host firewall does
// not weaken this; a stricter one may still drop an allowed endpoint.
type firewall struct {
	table  string
	bridge string
	subnet netip.Prefix
	dnat   []dnat           // loopback endpoints
	local  []netip.AddrPort // endpoints on an address of the caller's namespace
	remote []netip.AddrPort // endpoints reached by forwarding
	expose []uint16         // host ports the caller's namespace may connect to, with ExposeMark
}

// dnat sends what the hosts send to ServiceAddr:port to a loopback address.
type dnat struct {
	port uint16
	to   netip.AddrPort
}

func (fw *firewall) tableRef() *nftables.Table {
	return &nftables.Table{Name: fw.table, Family: nftables.TableFamilyINet}
}

// install creates the table in one netlink batch, so that the rules apply
// all at once.
func (fw *firewall) install() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := c.AddTable(fw.tableRef())
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		accept := nftables.ChainPolicyAccept // the table only judges the job's own traffic
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	rule := func(ch *nftables.Chain, e ...expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e}) }
	concat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	fromJob := matchIfname(expr.MetaKeyIIFNAME, fw.bridge, true)
	toJob := matchIfname(expr.MetaKeyOIFNAME, fw.bridge, true)
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}

	input := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	// After prerouting, input sees the DNAT-ed destination.
	for _, d := range fw.dnat {
		rule(input, concat(fromJob, matchTCPTo(d.to), accept)...)
	}
	for _, ap := range fw.local {
		rule(input, concat(fromJob, matchTCPTo(ap), accept)...)
	}
	for _, p := range fw.expose {
		rule(input, concat(fromJob, matchTCPPort(0, p), matchReply(), accept)...)
	}
	rule(input, concat(fromJob, drop)...)

	forward := chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	// With br_netfilter, bridged host-to-host frames pass this hook too.
	rule(forward, concat(fromJob, toJob, accept)...)
	for _, ap := range fw.remote {
		rule(forward, concat(fromJob, matchTCPTo(ap), accept)...)
	}
	rule(forward, concat(fromJob, drop)...)
	rule(forward, concat(toJob, matchReply(), accept)...)
	rule(forward, concat(toJob, drop)...)

	output := chain("output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
	rule(output, concat(toJob, matchReply(), accept)...)
	for _, p := range fw.expose {
		rule(output, concat(toJob, matchTCPPort(2, p), matchMark(ExposeMark), accept)...)
	}
	rule(output, concat(toJob, drop)...)

	if len(fw.dnat) > 0 {
		pre := chain("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
		for _, d := range fw.dnat {
			rule(pre, concat(fromJob, matchTCPTo(netip.AddrPortFrom(ServiceAddr, d.port)), []expr.Any{
				&expr.Immediate{Register: 1, Data: d.to.Addr().AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(d.to.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
			})...)
		}
	}
	if len(fw.remote) > 0 {
		post := chain("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
		rule(post, concat(matchSrcNet(fw.subnet), matchIfname(expr.MetaKeyOIFNAME, fw.bridge, false), []expr.Any{&expr.Masq{}})...)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table %s: %w", fw.table, err)
	}
	return nil
}

// deleteTable removes an inet table if it exists.
func deleteTable(name string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			c.DelTable(t)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("delete nftables table %s: %w", name, err)
			}
		}
	}
	return nil
}

// ifnameBytes is an interface name as the kernel compares it: NUL-padded.
func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func matchIfname(key expr.MetaKey, name string, equal bool) []expr.Any {
	op := expr.CmpOpEq
	if !equal {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameBytes(name)},
	}
}

// matchTCPTo matches IPv4 TCP to ap.
func matchTCPTo(ap netip.AddrPort) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ap.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(ap.Port())},
	}
}

// matchTCPPort matches TCP with source port p (offset 0) or destination
// port p (offset 2).
func matchTCPPort(offset uint32, p uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p)},
	}
}

// matchSrcNet matches IPv4 sources in p.
func matchSrcNet(p netip.Prefix) []expr.Any {
	mask := ipNet(p.Addr(), p.Bits()).Mask
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

// matchMark matches packets whose socket carries mark.
func matchMark(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
	}
}

// matchReply matches conntrack state established or related.
func matchReply() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}
