package mesh

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pool keeps handshaked tunnels to one peer ready, so that a new
// connection does not wait for a handshake.
type pool struct {
	a    *agent
	host string
	addr netip.Addr
	kick chan struct{}

	mu   sync.Mutex
	idle []pooled
}

type pooled struct {
	t     *tunnel
	since time.Time
}

// get returns a tunnel to the peer: a ready one that is still alive, or
// a new one.
func (p *pool) get(ctx context.Context) (*tunnel, error) {
	for {
		p.mu.Lock()
		n := len(p.idle)
		var pt pooled
		if n > 0 {
			pt, p.idle = p.idle[n-1], p.idle[:n-1]
		}
		p.mu.Unlock()
		select {
		case p.kick <- struct{}{}:
		default:
		}
		if n == 0 {
			return p.a.dialTunnel(ctx, p.host)
		}
		if time.Since(pt.since) < poolMaxIdle && alive(pt.t.conn) {
			return pt.t, nil
		}
		pt.t.close()
	}
}

// put takes back a tunnel whose connection ended cleanly, for the next.
func (p *pool) put(t *tunnel) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) >= maxIdleTunnels || t.send.seq > maxRecordsDir/2 {
		t.close()
		return
	}
	p.idle = append(p.idle, pooled{t, time.Now()})
}

// run refills the pool and retires tunnels that waited too long.
func (p *pool) run(ctx context.Context) {
	delay := 50 * time.Millisecond
	tick := time.NewTicker(poolMaxIdle / 4)
	defer tick.Stop()
	defer func() {
		p.mu.Lock()
		for _, pt := range p.idle {
			pt.t.close()
		}
		p.idle = nil
		p.mu.Unlock()
	}()
	for ctx.Err() == nil {
		p.mu.Lock()
		fresh := p.idle[:0]
		for _, pt := range p.idle {
			if time.Since(pt.since) < poolMaxIdle {
				fresh = append(fresh, pt)
			} else {
				pt.t.close()
			}
		}
		p.idle = fresh
		missing := poolSize - len(p.idle)
		p.mu.Unlock()
		if missing > 0 {
			t, err := p.a.dialTunnel(ctx, p.host)
			if err != nil {
				if ctx.Err() == nil {
					p.a.log.Debug("prepare tunnel", "peer", p.host, "err", err)
				}
				sleep(ctx, delay)
				delay = min(2*delay, maxRetryDelay)
				continue
			}
			delay = 50 * time.Millisecond
			p.mu.Lock()
			p.idle = append(p.idle, pooled{t, time.Now()})
			p.mu.Unlock()
			continue
		}
		select {
		case <-ctx.Done():
		case <-p.kick:
		case <-tick.C:
		}
	}
}

// alive tells whether a ready tunnel's peer has not closed it, without
// blocking: nothing may arrive on a ready tunnel before it is used.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = errors.Is(err, unix.EAGAIN)
		return true
	})
	return ok
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
