package mesh

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"convoy/internal/mesh/meshtest"
)

// The training code of a host talks to its own agent's
// ports directly, and squats them once the agent is dead. Nothing may
// reach a peer in clear, and the agent relays only connections the rules
// redirected.
func TestLocalProcessAgainstAgentPorts(t *testing.T) {
	nw := meshtest.New(t, 2)
	m := startMesh(t, nw, testSupervisor(t))
	h1, h2 := nw.Hosts[0], nw.Hosts[1]
	got := make(chan string, 16)
	serve(t, h2, 7777, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	c := dial(t, h1, netip.AddrPortFrom(h2.Addr, 7777).String())
	fmt.Fprintf(c, "legit")
	c.Close()
	if s := <-got; s != "legit" {
		t.Fatalf("legit connection carried %q", s)
	}

	// 1. Straight to the redirect port: not redirected, so refused.
	for _, to := range []string{
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), RedirectPort).String(),
		netip.AddrPortFrom(h1.Addr, TunnelPort).String(), // no certificate: TLS fails
	} {
		c, err := dialOnce(h1, to, 2*time.Second)
		if err != nil {
			t.Logf("%s: %v", to, err)
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("smuggled\n"))
		_, rerr := c.Read(make([]byte, 64))
		c.Close()
		if rerr == nil {
			t.Errorf("%s answered a plain local client", to)
		}
	}

	// 2. The agent of algo-1 dies; algo-1's code squats its ports and
	// dials algo-2's open port.
	p := m.job.process("algo-1")
	if p == nil {
		t.Fatal("no agent for algo-1")
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-m.failures:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent's death was not reported")
	}
	var squat []net.Listener
	for _, a := range []string{fmt.Sprintf("127.0.0.1:%d", RedirectPort), netip.AddrPortFrom(h1.Addr, TunnelPort).String(), fmt.Sprintf("0.0.0.0:%d", RedirectPort+100)} {
		h1.Do(func() error {
			ln, err := net.Listen("tcp4", a)
			if err == nil {
				squat = append(squat, ln)
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						c.Close()
					}
				}()
			}
			t.Logf("squat %s: %v", a, err)
			return nil
		})
	}
	defer func() {
		for _, ln := range squat {
			ln.Close()
		}
	}()
	for range 3 {
		if c, err := dialOnce(h1, netip.AddrPortFrom(h2.Addr, 7777).String(), 2*time.Second); err == nil {
			c.Write([]byte("cleartext"))
			c.Close()
		}
		// algo-2's live agent dialing the squatted tunnel port must not
		// carry anything either (its TLS handshake fails).
		if c, err := dialOnce(h2, netip.AddrPortFrom(h1.Addr, 29500).String(), 2*time.Second); err == nil {
			c.Write([]byte("cleartext"))
			c.Close()
		}
	}
	select {
	case s := <-got:
		t.Fatalf("algo-2's application received %q from algo-1 with algo-1's agent dead", s)
	case <-time.After(2 * time.Second):
	}
}
