package mesh

import (
	"context"
	"crypto/fips140"
	"crypto/tls"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// watchCounts reports, once, that the rules dropped traffic between hosts
// that the mesh cannot carry; a last time when the agent stops, so that a
// short job is told too.
func (a *agent) watchCounts(ctx context.Context) {
	tick := time.NewTicker(countsInterval)
	defer tick.Stop()
	var last dropCounts
	reported := false
	check := func() {
		a.nftMu.Lock()
		d, err := readCounts(a.nft)
		a.nftMu.Unlock()
		if err != nil {
			a.log.Error("read drop counters", "err", err)
			return
		}
		if d != last {
			a.log.Debug("drop counters", "udp", d.UDP, "icmp", d.ICMP, "other", d.Other, "inbound", d.Inbound, "refused", d.Refused)
		}
		last = d
		if !reported && d.outbound() > 0 {
			reported = true
			a.jobLog.printf("dropped %d packets from this host to other hosts of the job (UDP %d, ICMP %d, other %d): "+
				"inter-node encryption carries TCP only, and nothing is ever sent in clear. Use TCP between hosts. (Reported once.)",
				d.outbound(), d.UDP, d.ICMP, d.Other)
		}
	}
	for {
		select {
		case <-ctx.Done():
			check()
			if last.outbound() > 0 || last.Inbound > 0 {
				a.log.Info("packets dropped by the mesh rules", "udp", last.UDP, "icmp", last.ICMP, "other", last.Other, "inbound", last.Inbound)
			}
			return
		case <-tick.C:
			check()
		}
	}
}

// announce writes the job log's opening line.
func (a *agent) announce() {
	var peers []string
	for _, h := range a.cfg.others() {
		peers = append(peers, fmt.Sprintf("%s at %s (%s)", h, a.cfg.Peers[h], IdentityURI(a.cfg.Job, h)))
	}
	pol := a.cfg.Profile.Policy()
	var groups []string
	for _, g := range pol.Groups {
		groups = append(groups, g.String())
	}
	a.jobLog.printf("inter-node encryption is on for %s at %s (%s): its TCP connections to the other hosts of the job "+
		"are carried in mutually authenticated tunnels: TLS 1.3 handshake (key exchange %s; ECDSA P-256 certificates "+
		"issued by a CA made for this job alone, whose key no longer exists), then records sealed with AES-256-GCM under keys "+
		"exported from the handshake%s. Peers: %s. Any other traffic between hosts (UDP, ICMP, …) is dropped.",
		a.cfg.Host, a.cfg.Addr, IdentityURI(a.cfg.Job, a.cfg.Host), strings.Join(groups, ", "), fipsNote(), strings.Join(peers, "; "))
	a.log.Info("mesh agent ready", "addr", a.cfg.Addr.String(), "peers", len(a.cfg.Peers)-1, "profile", string(a.cfg.Profile), "fips140", fips140.Enabled())
}

func fipsNote() string {
	if fips140.Enabled() {
		return ", all in Go's FIPS 140-3 module"
	}
	return ""
}

// announcePeer logs, once per peer, what its first tunnel negotiated.
func (a *agent) announcePeer(t *tunnel) {
	if _, done := a.announced.LoadOrStore(t.peer.Host, true); done {
		return
	}
	a.jobLog.printf("tunnel with %s at %s verified: certificate %s issued by the job's CA; TLS 1.3, %s, %s; records AES-256-GCM.",
		t.peer.Host, t.peer.Addr, IdentityURI(a.cfg.Job, t.peer.Host), t.tls.CurveID, tls.CipherSuiteName(t.tls.CipherSuite))
	a.log.Info("tunnel verified", "peer", t.peer.Host, "group", t.tls.CurveID.String(), "suite", tls.CipherSuiteName(t.tls.CipherSuite))
}

// jobLog appends lines to the host's log file, which the job's owner
// reads next to the container's output.
type jobLog struct {
	mu sync.Mutex
	f  *os.File
}

// JobLogPrefix starts every line the mesh writes to a job's log.
const JobLogPrefix = "[convoy mesh] "

func openJobLog(path string) (*jobLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open the job log: %w", err)
	}
	return &jobLog{f: f}, nil
}

func (l *jobLog) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.f, JobLogPrefix+format+"\n", args...)
}

func (l *jobLog) close() { l.f.Close() }
