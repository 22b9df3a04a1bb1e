package mesh

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"convoy/internal/pki"
	"convoy/internal/tlsconf"
)

// testJob is a job's CA and the certificates of its hosts, which sit on
// loopback addresses (127.0.0.2, 127.0.0.3, …) so that the server side
// can check where a connection comes from.
type testJob struct {
	name  string
	ca    *pki.CA
	peers map[string]netip.Addr
	certs map[string]*tls.Certificate
}

func newTestJob(t testing.TB, name string, hosts int) *testJob {
	t.Helper()
	ca, err := pki.NewEphemeralCA("test mesh CA "+name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	j := &testJob{name: name, ca: ca, peers: map[string]netip.Addr{}, certs: map[string]*tls.Certificate{}}
	for i := range hosts {
		h := fmt.Sprintf("algo-%d", i+1)
		j.peers[h] = netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 2)})
	}
	for h, a := range j.peers {
		j.certs[h] = j.issue(t, h, a, IdentityURI(name, h))
	}
	return j
}

func (j *testJob) issue(t testing.TB, host string, addr netip.Addr, uris ...*url.URL) *tls.Certificate {
	t.Helper()
	c, err := j.ca.Issue(pki.LeafRequest{CommonName: host, Names: []string{addr.String()}, URIs: uris, Purpose: pki.PeerAuth, Lifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (j *testJob) roots() *x509.CertPool { return j.ca.Pool() }

func (j *testJob) verifier(host string) *verifier {
	return &verifier{job: j.name, self: host, peers: j.peers}
}

// dialPair runs a tunnel handshake between client (as host from, with
// cert, dialing from addr) and a server that is host to of job.
func dialPair(t *testing.T, job *testJob, from string, fromAddr netip.Addr, cert *tls.Certificate, roots *x509.CertPool, to string) (client, server *tunnel, cerr, serr error) {
	t.Helper()
	toAddr := job.peers[to]
	ln, err := net.Listen("tcp4", netip.AddrPortFrom(toAddr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		t   *tunnel
		err error
	}
	sch := make(chan res, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			sch <- res{nil, err}
			return
		}
		remote := raw.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		v := job.verifier(to)
		cfg := tlsconf.MeshServer(tlsconf.Modern, tlsconf.MeshOptions{Certificate: job.certs[to], Roots: job.roots(),
			Verify: func(cs tls.ConnectionState) error { _, err := v.server(cs, remote); return err }})
		tn, err := handshake(context.Background(), raw, cfg, false)
		if err != nil {
			raw.Close()
		}
		sch <- res{tn, err}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: fromAddr.AsSlice()}, Timeout: 5 * time.Second}
	raw, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	v := &verifier{job: job.name, self: from, peers: job.peers}
	cfg := tlsconf.MeshClient(tlsconf.Modern, toAddr.String(), tlsconf.MeshOptions{Certificate: cert, Roots: roots,
		Verify: func(cs tls.ConnectionState) error { return v.client(cs, to) }})
	client, cerr = handshake(context.Background(), raw, cfg, true)
	if cerr != nil {
		raw.Close()
	}
	r := <-sch
	if client != nil {
		t.Cleanup(func() { client.close() })
	}
	if r.t != nil {
		t.Cleanup(func() { r.t.close() })
	}
	return client, r.t, cerr, r.err
}

func TestTunnelHandshakeAndRecords(t *testing.T) {
	job := newTestJob(t, "job-a", 2)
	c, s, cerr, serr := dialPair(t, job, "algo-1", job.peers["algo-1"], job.certs["algo-1"], job.roots(), "algo-2")
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if c.tls.Version != tls.VersionTLS13 || c.tls.NegotiatedProtocol != tlsconf.MeshALPN {
		t.Fatalf("negotiated %x %q", c.tls.Version, c.tls.NegotiatedProtocol)
	}
	// The client writes records right after its handshake; the server must
	// find every byte of them on the TCP stream (none swallowed by tls.Conn).
	big := bytes.Repeat([]byte("x"), maxPayload)
	go func() {
		c.write(recOpen, []byte{0, 80})
		c.write(recData, big)
		c.write(recFin, nil)
	}()
	for i, want := range []recordType{recOpen, recData, recFin} {
		typ, p, err := s.recv.next()
		if err != nil || typ != want {
			t.Fatalf("record %d: %v %v, want %v", i, typ, err, want)
		}
		if typ == recData && !bytes.Equal(p, big) {
			t.Fatal("data differs")
		}
	}
	// And the other way.
	s.write(recData, []byte("reply"))
	if typ, p, err := c.recv.next(); err != nil || typ != recData || string(p) != "reply" {
		t.Fatalf("reply: %v %q %v", typ, p, err)
	}
}

// Each identity check refuses what it should, on the side that makes it.
func TestTunnelIdentityChecks(t *testing.T) {
	job := newTestJob(t, "job-a", 3)
	other := newTestJob(t, "job-b", 3) // another job, same host names and addresses
	a1, a3 := job.peers["algo-1"], job.peers["algo-3"]
	otherJobSameName := newTestJob(t, "job-a", 3) // a CA that is not this job's, naming this job

	for _, tc := range []struct {
		name    string
		from    string
		addr    netip.Addr
		cert    *tls.Certificate
		roots   *x509.CertPool
		to      string
		wantErr string // on either side
	}{
		{"valid peer", "algo-1", a1, job.certs["algo-1"], job.roots(), "algo-2", ""},
		{"certificate from another job's CA", "algo-1", a1, other.certs["algo-1"], job.roots(), "algo-2", "certificate"},
		{"CA impersonating this job", "algo-1", a1, otherJobSameName.certs["algo-1"], job.roots(), "algo-2", "certificate"},
		{"client trusts another CA", "algo-1", a1, job.certs["algo-1"], other.roots(), "algo-2", "certificate"},
		{"host's certificate used from another address", "algo-1", a3, job.certs["algo-1"], job.roots(), "algo-2", "connected from"},
		{"certificate naming the server itself", "algo-2", job.peers["algo-2"], job.certs["algo-2"], job.roots(), "algo-2", "not another host"},
		{"certificate without identity", "algo-1", a1, job.issue(t, "algo-1", a1), job.roots(), "algo-2", "URI SANs"},
		{"identity of another job", "algo-1", a1, job.issue(t, "algo-1", a1, IdentityURI("job-b", "algo-1")), job.roots(), "algo-2", "not of"},
		{"two identities", "algo-1", a1, job.issue(t, "algo-1", a1, IdentityURI("job-a", "algo-1"), IdentityURI("job-a", "algo-3")), job.roots(), "algo-2", "URI SANs"},
		{"identity of an unknown host", "algo-1", a1, job.issue(t, "algo-1", a1, IdentityURI("job-a", "algo-9")), job.roots(), "algo-2", "not another host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, cerr, serr := dialPair(t, job, tc.from, tc.addr, tc.cert, tc.roots, tc.to)
			err := errors.Join(cerr, serr)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
			}
			t.Logf("refused: %v", err)
		})
	}
}

// The client side checks that the server is the host it dialed.
func TestTunnelClientChecksServer(t *testing.T) {
	job := newTestJob(t, "job-a", 3)
	v := job.verifier("algo-1")
	leaf := func(c *tls.Certificate) tls.ConnectionState {
		return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c.Leaf}}
	}
	if err := v.client(leaf(job.certs["algo-2"]), "algo-2"); err != nil {
		t.Fatalf("algo-2 as algo-2: %v", err)
	}
	if err := v.client(leaf(job.certs["algo-3"]), "algo-2"); err == nil {
		t.Fatal("algo-3's certificate accepted as algo-2")
	}
	// And crypto/tls checks the dialed address: algo-3's certificate
	// presented at algo-2's address fails the handshake.
	j2 := &testJob{name: job.name, ca: job.ca, peers: job.peers, certs: map[string]*tls.Certificate{}}
	for h, c := range job.certs {
		j2.certs[h] = c
	}
	j2.certs["algo-2"] = job.certs["algo-3"]
	_, _, cerr, _ := dialPair(t, j2, "algo-1", job.peers["algo-1"], job.certs["algo-1"], job.roots(), "algo-2")
	if cerr == nil {
		t.Fatal("client accepted a server whose certificate names another address and host")
	}
}

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		uri       string
		job, host string
	}{
		{"convoy://job/train-1/host/algo-1", "train-1", "algo-1"},
		{"convoy://job/j/host/algo-253", "j", "algo-253"},
		{"convoy://job/J/host/algo-1", "", ""},
		{"convoy://job/j/host/algo-0", "", ""},
		{"convoy://job/j/host/algo-1/x", "", ""},
		{"convoy://job/j/host/algo-1?x=1", "", ""},
		{"convoy://user@job/j/host/algo-1", "", ""},
		{"https://job/j/host/algo-1", "", ""},
		{"convoy://job/../host/algo-1", "", ""},
		{"convoy://jobs/j/host/algo-1", "", ""},
	} {
		u, err := url.Parse(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		job, host, err := parseIdentity(u)
		if (err == nil) != (tc.job != "") || job != tc.job || host != tc.host {
			t.Errorf("%s: %q %q %v", tc.uri, job, host, err)
		}
	}
	if got := IdentityURI("j", "algo-2").String(); got != "convoy://job/j/host/algo-2" {
		t.Fatalf("IdentityURI: %s", got)
	}
}

func FuzzParseIdentity(f *testing.F) {
	f.Add("convoy://job/train-1/host/algo-1")
	f.Add("convoy://job//host/")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		job, host, err := parseIdentity(u)
		if err != nil {
			return
		}
		if got := IdentityURI(job, host).String(); got != u.String() {
			t.Fatalf("%q parsed as %q/%q, which is %q", s, job, host, got)
		}
	})
}
