package mesh

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// portWatch is the set of TCP ports this host listens on for its peers.
type portWatch struct {
	mu      sync.Mutex
	ports   []uint16
	changed chan struct{} // closed at the next change
}

func (w *portWatch) init() { w.changed = make(chan struct{}) }

func (w *portWatch) get() ([]uint16, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ports, w.changed
}

func (w *portWatch) set(ports []uint16) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if slices.Equal(ports, w.ports) {
		return false
	}
	w.ports = ports
	close(w.changed)
	w.changed = make(chan struct{})
	return true
}

// watchPorts polls the host's listening TCP sockets.
func (a *agent) watchPorts(ctx context.Context) {
	tick := time.NewTicker(portsInterval)
	defer tick.Stop()
	for {
		ports, err := listeningPorts(a.cfg.Addr)
		if err != nil {
			a.log.Error("watch listening ports", "err", err) // keep the last list
		} else if ports = slices.DeleteFunc(ports, func(p uint16) bool { return p == TunnelPort }); a.ports.set(ports) {
			a.log.Debug("listening ports changed", "ports", ports)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// publish sends this host's listening ports on a subscriber's tunnel,
// now and at every change, until the tunnel ends.
func (a *agent) publish(ctx context.Context, t *tunnel) {
	gone := make(chan struct{})
	go func() {
		t.recv.next() // the subscriber sends nothing more: any outcome ends it
		close(gone)
	}()
	defer t.close()
	for {
		ports, changed := a.ports.get()
		if err := t.write(recPorts, encodePorts(ports)); err != nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-gone:
			return
		case <-changed:
		}
	}
}

// subscribe keeps this host's "open" set up to date with host's listening
// ports, through a control tunnel it redials when it fails.
func (a *agent) subscribe(ctx context.Context, host string) {
	addr := a.cfg.Peers[host]
	var open []uint16
	apply := func(ports []uint16) {
		add, del := diffPorts(open, ports)
		if len(add) == 0 && len(del) == 0 {
			return
		}
		a.nftMu.Lock()
		err := setOpenPorts(a.nft, addr, add, del)
		a.nftMu.Unlock()
		if err != nil {
			a.log.Error("update open ports of peer", "peer", host, "err", err)
			return
		}
		open = ports
	}
	defer apply(nil)
	delay := 50 * time.Millisecond
	for ctx.Err() == nil {
		t, err := a.dialTunnel(ctx, host)
		if err == nil {
			err = t.write(recSubscribe, nil)
		}
		for err == nil {
			var typ recordType
			var p []byte
			typ, p, err = t.recv.next()
			if err != nil {
				break
			}
			if typ != recPorts {
				err = fmt.Errorf("unexpected %s record on a control tunnel", typ)
				break
			}
			var ports []uint16
			if ports, err = decodePorts(p); err == nil {
				apply(ports)
				delay = 50 * time.Millisecond
			}
		}
		if t != nil {
			t.close()
		}
		// Until the peer answers again, none of its ports is open.
		apply(nil)
		if ctx.Err() == nil {
			a.log.Debug("control tunnel to peer", "peer", host, "err", err)
			sleep(ctx, delay)
			delay = min(2*delay, maxRetryDelay)
		}
	}
}

// diffPorts returns what to add to and delete from old to get new (both
// ascending).
func diffPorts(old, new []uint16) (add, del []uint16) {
	for _, p := range new {
		if _, found := slices.BinarySearch(old, p); !found {
			add = append(add, p)
		}
	}
	for _, p := range old {
		if _, found := slices.BinarySearch(new, p); !found {
			del = append(del, p)
		}
	}
	return add, del
}
