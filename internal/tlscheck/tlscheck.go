// Package tlscheck grades a TLS endpoint against a convoy TLS profile: it
// makes one handshake the way a current client would and reports what was
// negotiated and the certificate chain, then probes with deliberately weak
// offers (old versions, CBC, RSA key exchange, groups outside the profile)
// that a conforming endpoint must refuse. Written by hand because the tools
// that do this (testssl.sh, sslscan) are shell or C programs that do not know
// convoy's profiles; convoy's e2e tests run them as well.
package tlscheck

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"convoy/internal/tlsconf"
)

// Report is the result of a check.
type Report struct {
	Address     string      `json:"address"`
	ServerName  string      `json:"server_name"`
	Profile     string      `json:"profile"`
	Version     string      `json:"version"`
	CipherSuite string      `json:"cipher_suite"`
	Group       string      `json:"key_exchange_group"`
	PostQuantum bool        `json:"post_quantum"`
	ALPN        string      `json:"alpn,omitempty"`
	Resumption  bool        `json:"session_resumption"`
	Chain       []CertInfo  `json:"certificate_chain"`
	Verified    bool        `json:"chain_verified"`
	VerifyError string      `json:"verify_error,omitempty"`
	Probes      []ProbeInfo `json:"probes"`
	// Findings are the ways the endpoint is weaker than the profile; none
	// means it passes.
	Findings []string `json:"findings"`
}

// CertInfo describes one certificate of the served chain.
type CertInfo struct {
	Subject   string    `json:"subject"`
	Issuer    string    `json:"issuer"`
	Names     []string  `json:"names,omitempty"`
	Key       string    `json:"key"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	ExpiresIn string    `json:"expires_in"`
}

// ProbeInfo is one weak offer and whether the endpoint accepted it.
type ProbeInfo struct {
	Offer    string `json:"offer"`
	Accepted bool   `json:"accepted"`
	Detail   string `json:"detail,omitempty"`
}

// Options configure a check.
type Options struct {
	Profile    tlsconf.Profile
	Roots      *x509.CertPool // nil: system roots
	ServerName string         // default: host of the address
	Timeout    time.Duration
}

var allGroups = []tls.CurveID{tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}

// Check grades the endpoint at addr (host:port).
func Check(ctx context.Context, addr string, o Options) (*Report, error) {
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: want HOST:PORT", addr)
	}
	if o.ServerName == "" {
		o.ServerName = host
	}
	rep := &Report{Address: addr, ServerName: o.ServerName, Profile: string(o.Profile)}
	pol := o.Profile.Policy()

	// 1. What a current client gets: every secure suite, PQ groups first.
	offer := tlsconf.Probe(o.ServerName, tls.VersionTLS12, tls.VersionTLS13, secureSuites(), allGroups)
	offer.NextProtos = []string{"h2", "http/1.1"}
	offer.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	st, err := handshake(ctx, addr, offer, o.Timeout)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	rep.Version = tls.VersionName(st.Version)
	rep.CipherSuite = tls.CipherSuiteName(st.CipherSuite)
	rep.Group = st.CurveID.String()
	rep.PostQuantum = tlsconf.PostQuantum(st.CurveID)
	rep.ALPN = st.NegotiatedProtocol
	for _, c := range st.PeerCertificates {
		rep.Chain = append(rep.Chain, describe(c))
	}
	rep.Verified, rep.VerifyError = verify(st.PeerCertificates, o)
	if st2, err := handshake(ctx, addr, offer, o.Timeout); err == nil {
		rep.Resumption = st2.DidResume
	}

	finding := func(format string, args ...any) { rep.Findings = append(rep.Findings, fmt.Sprintf(format, args...)) }
	if st.Version < pol.MinVersion {
		finding("negotiated %s, profile %s needs at least %s", rep.Version, o.Profile, tls.VersionName(pol.MinVersion))
	}
	if !slices.Contains(pol.Groups, st.CurveID) {
		finding("key exchange group %s is not in profile %s", rep.Group, o.Profile)
	}
	if pol.Groups[0] == tls.X25519MLKEM768 && !rep.PostQuantum {
		finding("offered X25519MLKEM768 but the server chose %s: no post-quantum key exchange", rep.Group)
	}
	if st.Version == tls.VersionTLS13 && !slices.Contains(pol.TLS13Suites, st.CipherSuite) {
		finding("TLS 1.3 suite %s is not in profile %s", rep.CipherSuite, o.Profile)
	}
	if st.Version == tls.VersionTLS12 && !slices.Contains(pol.Suites, st.CipherSuite) {
		finding("TLS 1.2 suite %s is not in profile %s", rep.CipherSuite, o.Profile)
	}
	if !rep.Verified {
		finding("certificate chain does not verify: %s", rep.VerifyError)
	}

	// 2. Weak offers the endpoint must refuse.
	every := append(secureSuites(), insecureSuites()...)
	type probe struct {
		name   string
		cfg    *tls.Config
		refuse bool
	}
	probes := []probe{
		{"TLS 1.0", tlsconf.Probe(o.ServerName, tls.VersionTLS10, tls.VersionTLS10, every, allGroups), true},
		{"TLS 1.1", tlsconf.Probe(o.ServerName, tls.VersionTLS11, tls.VersionTLS11, every, allGroups), true},
		{"TLS 1.2", tlsconf.Probe(o.ServerName, tls.VersionTLS12, tls.VersionTLS12, every, allGroups), pol.MinVersion > tls.VersionTLS12},
		{"TLS 1.2 with CBC suites only", tlsconf.Probe(o.ServerName, tls.VersionTLS12, tls.VersionTLS12, cbcSuites(), allGroups), true},
		{"TLS 1.2 with RSA key exchange only", tlsconf.Probe(o.ServerName, tls.VersionTLS12, tls.VersionTLS12, rsaKexSuites(), allGroups), true},
	}
	if len(pol.Suites) > 0 {
		for _, s := range tls.CipherSuites() {
			if slices.Contains(s.SupportedVersions, tls.VersionTLS12) && !slices.Contains(pol.Suites, s.ID) && !slices.Contains(cbcSuites(), s.ID) {
				probes = append(probes, probe{"TLS 1.2 with " + s.Name + " only",
					tlsconf.Probe(o.ServerName, tls.VersionTLS12, tls.VersionTLS12, []uint16{s.ID}, allGroups), true})
			}
		}
	}
	for _, g := range allGroups {
		if !slices.Contains(pol.Groups, g) {
			probes = append(probes, probe{"key exchange " + g.String() + " only",
				tlsconf.Probe(o.ServerName, pol.MinVersion, tls.VersionTLS13, every, []tls.CurveID{g}), true})
		}
	}
	for _, p := range probes {
		st, err := handshake(ctx, addr, p.cfg, o.Timeout)
		info := ProbeInfo{Offer: p.name, Accepted: err == nil}
		if err == nil {
			info.Detail = fmt.Sprintf("negotiated %s %s %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
			if p.refuse {
				finding("accepted %s (%s)", p.name, info.Detail)
			}
		} else {
			info.Detail = shortErr(err)
		}
		rep.Probes = append(rep.Probes, info)
	}
	return rep, nil
}

func handshake(ctx context.Context, addr string, cfg *tls.Config, timeout time.Duration) (tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	// In TLS 1.3 the session ticket arrives after the handshake: read briefly
	// so that a resumption probe has a ticket to use.
	tc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	io.ReadAll(io.LimitReader(tc, 1))
	return tc.ConnectionState(), nil
}

func verify(chain []*x509.Certificate, o Options) (bool, string) {
	if len(chain) == 0 {
		return false, "no certificate"
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots: o.Roots, Intermediates: inter, DNSName: o.ServerName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return false, err.Error()
	}
	return true, ""
}

func describe(c *x509.Certificate) CertInfo {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	key := "unknown"
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		key = "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		key = fmt.Sprintf("RSA %d", k.N.BitLen())
	case ed25519.PublicKey:
		key = "Ed25519"
	}
	return CertInfo{
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), Names: names, Key: key,
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, ExpiresIn: time.Until(c.NotAfter).Round(time.Second).String(),
	}
}

func secureSuites() []uint16 {
	var out []uint16
	for _, s := range tls.CipherSuites() {
		out = append(out, s.ID)
	}
	return out
}

func insecureSuites() []uint16 {
	var out []uint16
	for _, s := range tls.InsecureCipherSuites() {
		out = append(out, s.ID)
	}
	return out
}

func cbcSuites() []uint16 {
	var out []uint16
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if strings.Contains(s.Name, "_CBC_") {
			out = append(out, s.ID)
		}
	}
	return out
}

func rsaKexSuites() []uint16 {
	var out []uint16
	for _, s := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if strings.HasPrefix(s.Name, "TLS_RSA_") {
			out = append(out, s.ID)
		}
	}
	return out
}

func shortErr(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && !strings.HasPrefix(msg, "remote error") {
		return msg[i+2:]
	}
	return msg
}
