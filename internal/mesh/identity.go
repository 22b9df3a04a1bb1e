package mesh

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
)

// A host's identity is a URI SAN naming the job and the host,
// convoy://job/<job>/host/<host>, next to an IP SAN with the host's
// address, in a certificate issued by the job's own CA. A peer is
// accepted only when all three agree with what the job expects: the chain
// ends at this job's CA, the URI names this job and a host of it, and that
// host's address is the one the connection uses.

// IdentityURI is the URI SAN of host in job.
func IdentityURI(job, host string) *url.URL {
	return &url.URL{Scheme: "convoy", Host: "job", Path: "/" + job + "/host/" + host}
}

var (
	validJob  = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	validHost = regexp.MustCompile(`^algo-[1-9][0-9]{0,2}$`)
)

// parseIdentity returns the job and host a URI names, or an error.
func parseIdentity(u *url.URL) (job, host string, err error) {
	if u.Scheme != "convoy" || u.Host != "job" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("identity %q is not a convoy job host", u)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 || parts[1] != "host" || !validJob.MatchString(parts[0]) || !validHost.MatchString(parts[2]) {
		return "", "", fmt.Errorf("identity %q is not a convoy job host", u)
	}
	return parts[0], parts[2], nil
}

// peerIdentity is what verification learned about a peer.
type peerIdentity struct {
	Host string
	Addr netip.Addr
}

// identityOf returns the job host a verified leaf certificate names. It
// must carry exactly one convoy URI SAN.
func identityOf(leaf *x509.Certificate) (job, host string, err error) {
	if len(leaf.URIs) != 1 {
		return "", "", fmt.Errorf("certificate %q carries %d URI SANs, want exactly one job host identity", leaf.Subject.CommonName, len(leaf.URIs))
	}
	return parseIdentity(leaf.URIs[0])
}

// verifier checks peers for one host of one job.
type verifier struct {
	job   string
	self  string
	peers map[string]netip.Addr // every host of the job, self included
}

// server checks a dialing peer: its certificate names a host of this job
// other than this one, and the connection comes from that host's address.
func (v *verifier) server(cs tls.ConnectionState, remote netip.Addr) (peerIdentity, error) {
	if len(cs.PeerCertificates) == 0 {
		return peerIdentity{}, errors.New("peer sent no certificate")
	}
	job, host, err := identityOf(cs.PeerCertificates[0])
	if err != nil {
		return peerIdentity{}, err
	}
	if job != v.job {
		return peerIdentity{}, fmt.Errorf("peer is a host of job %q, not of %q", job, v.job)
	}
	want, ok := v.peers[host]
	if !ok || host == v.self {
		return peerIdentity{}, fmt.Errorf("peer %s is not another host of job %s", host, v.job)
	}
	if remote.Unmap() != want {
		return peerIdentity{}, fmt.Errorf("peer %s of job %s connected from %s, but %s is at %s", host, job, remote, host, want)
	}
	if !hasIP(cs.PeerCertificates[0], want) {
		return peerIdentity{}, fmt.Errorf("certificate of %s does not carry its address %s", host, want)
	}
	return peerIdentity{Host: host, Addr: want}, nil
}

// client checks the peer a host dialed: its certificate names that host
// of this job. (crypto/tls has already checked that it carries the
// dialed address as an IP SAN: the ServerName is the address.)
func (v *verifier) client(cs tls.ConnectionState, host string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("peer sent no certificate")
	}
	job, got, err := identityOf(cs.PeerCertificates[0])
	if err != nil {
		return err
	}
	if job != v.job || got != host {
		return fmt.Errorf("dialed %s of job %s but the certificate names %s of job %s", host, v.job, got, job)
	}
	return nil
}

func hasIP(c *x509.Certificate, a netip.Addr) bool {
	for _, ip := range c.IPAddresses {
		if x, ok := netip.AddrFromSlice(ip); ok && x.Unmap() == a {
			return true
		}
	}
	return false
}
