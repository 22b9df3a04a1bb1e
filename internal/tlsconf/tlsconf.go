// Package tlsconf is the only place in convoy that builds a *tls.Config.
//
// Every listener and every client in convoy takes its configuration from here,
// so the security properties of the whole product can be read on one page:
//
//   - modern (default): TLS 1.3 only, X25519MLKEM768 hybrid post-quantum key
//     exchange first, then X25519 and P-256.
//   - compat: TLS 1.2 and 1.3, ECDHE key exchange only (forward secrecy),
//     AES-GCM and ChaCha20-Poly1305 only.
//   - fips: TLS 1.2 and 1.3, P-256/P-384 (and the SecP256r1MLKEM768 hybrid),
//     AES-GCM only.
//
// No profile offers TLS below 1.2, CBC suites or RSA key exchange. The seeds
// accept TLS 1.0 clients; convoy deliberately does not.
//
// Certificates are always served through GetCertificate, so that a renewed
// leaf is picked up by the next handshake without a restart.
//
// The tunnels between the hosts of a distributed job (internal/mesh) take
// theirs from MeshClient and MeshServer: TLS 1.3 only, mutual
// authentication against the job's own CA, the profile's groups.
package tlsconf

import (
	"crypto/fips140"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Profile names a TLS policy.
type Profile string

const (
	Modern Profile = "modern"
	Compat Profile = "compat"
	FIPS   Profile = "fips"
)

// Profiles lists every profile, default first.
var Profiles = []Profile{Modern, Compat, FIPS}

// ParseProfile returns the profile called name.
func ParseProfile(name string) (Profile, error) {
	p := Profile(strings.ToLower(strings.TrimSpace(name)))
	if slices.Contains(Profiles, p) {
		return p, nil
	}
	return "", fmt.Errorf("unknown TLS profile %q: choose one of modern, compat, fips", name)
}

// Policy is the negotiable surface of a profile.
type Policy struct {
	MinVersion uint16
	MaxVersion uint16
	// Groups in order of preference.
	Groups []tls.CurveID
	// Suites are the TLS 1.2 cipher suites. TLS 1.3 suites are not
	// configurable in crypto/tls; the fips profile restricts them in
	// GetConfigForClient (see serverConfig).
	Suites []uint16
	// TLS13Suites are the TLS 1.3 suites the profile accepts.
	TLS13Suites []uint16
}

// tls12AEAD are the only TLS 1.2 suites convoy will ever negotiate: ECDHE
// (forward secrecy) with an AEAD. ECDSA first because convoy's own PKI issues
// ECDSA keys; the RSA-authenticated variants serve user-supplied RSA certs
// (the key exchange is still ECDHE).
var (
	tls12GCM = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
		tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	}
	tls12ChaCha = []uint16{
		tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
		tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	}
	tls13All = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}
	tls13GCM = []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384}
)

// Policy returns what profile p allows.
func (p Profile) Policy() Policy {
	switch p {
	case Compat:
		return Policy{
			MinVersion:  tls.VersionTLS12,
			MaxVersion:  tls.VersionTLS13,
			Groups:      []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384},
			Suites:      slices.Concat(tls12GCM, tls12ChaCha),
			TLS13Suites: tls13All,
		}
	case FIPS:
		return Policy{
			MinVersion:  tls.VersionTLS12,
			MaxVersion:  tls.VersionTLS13,
			Groups:      []tls.CurveID{tls.SecP256r1MLKEM768, tls.CurveP256, tls.CurveP384},
			Suites:      tls12GCM,
			TLS13Suites: tls13GCM,
		}
	default:
		return Policy{
			MinVersion:  tls.VersionTLS13,
			MaxVersion:  tls.VersionTLS13,
			Groups:      []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256},
			TLS13Suites: tls13All,
		}
	}
}

// PostQuantum reports whether group is a hybrid post-quantum key exchange.
func PostQuantum(group tls.CurveID) bool {
	switch group {
	case tls.X25519MLKEM768, tls.SecP256r1MLKEM768, tls.SecP384r1MLKEM1024:
		return true
	}
	return false
}

// FIPSModuleEnabled reports whether the Go FIPS 140-3 module is active
// (GODEBUG=fips140=on or only).
func FIPSModuleEnabled() bool { return fips140.Enabled() }

// GetCertificateFunc supplies the serving certificate for a handshake.
type GetCertificateFunc func(*tls.ClientHelloInfo) (*tls.Certificate, error)

// ServerOptions configure a server config beyond the profile.
type ServerOptions struct {
	// NextProtos for ALPN; nil means HTTP/2 and HTTP/1.1.
	NextProtos []string
	// ClientCAs, when set, requires and verifies client certificates (mTLS).
	ClientCAs *x509.CertPool
	// OptionalClientCert verifies a client certificate if one is sent but
	// does not require it.
	OptionalClientCert bool
	// VerifyConnection, if set, is the caller's own check of every
	// handshake, resumed ones included (the edge's device revocations). It
	// runs in every configuration the server answers with, after the
	// profile's own checks.
	VerifyConnection func(tls.ConnectionState) error
}

// Server returns the server configuration for profile p.
func Server(p Profile, getCert GetCertificateFunc, opts ServerOptions) *tls.Config {
	base := serverConfig(p, getCert, opts)
	if p != FIPS {
		return base
	}
	// crypto/tls does not let a server restrict TLS 1.3 cipher suites, and
	// it follows a client whose first TLS 1.3 suite is ChaCha20 (a client
	// without AES hardware, or OpenSSL told so) even when AES-GCM is
	// offered too. In FIPS 140-3 mode the module already limits TLS 1.3 to
	// AES-GCM; without it, a client whose first TLS 1.3 suite is not
	// AES-GCM is held to TLS 1.2, where Suites (ECDHE with AES-GCM only)
	// applies, or the handshake fails cleanly. VerifyConnection refuses
	// any other outcome, should crypto/tls ever choose differently.
	base.VerifyConnection = func(cs tls.ConnectionState) error {
		if !fipsSuite(cs) {
			return fmt.Errorf("fips profile: %s %s is not an approved suite", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
		}
		if opts.VerifyConnection != nil {
			return opts.VerifyConnection(cs)
		}
		return nil
	}
	tls12Only := base.Clone()
	tls12Only.MaxVersion = tls.VersionTLS12
	outer := base.Clone()
	outer.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if FIPSModuleEnabled() {
			return nil, nil // TLS 1.3 is AES-GCM only already
		}
		for _, s := range hello.CipherSuites {
			if isTLS13Suite(s) {
				if slices.Contains(tls13GCM, s) {
					return nil, nil
				}
				break
			}
		}
		return tls12Only, nil
	}
	return outer
}

// isTLS13Suite reports whether s is a TLS 1.3 cipher suite (RFC 8446:
// 0x1301–0x1305); GREASE and TLS 1.2 suites are not.
func isTLS13Suite(s uint16) bool { return s >= 0x1301 && s <= 0x1305 }

// fipsSuite reports whether cs used a suite of the fips profile.
func fipsSuite(cs tls.ConnectionState) bool {
	if cs.Version == tls.VersionTLS13 {
		return slices.Contains(tls13GCM, cs.CipherSuite)
	}
	return slices.Contains(FIPS.Policy().Suites, cs.CipherSuite)
}

func serverConfig(p Profile, getCert GetCertificateFunc, opts ServerOptions) *tls.Config {
	pol := p.Policy()
	protos := opts.NextProtos
	if protos == nil {
		protos = []string{"h2", "http/1.1"}
	}
	cfg := &tls.Config{
		MinVersion:       pol.MinVersion,
		MaxVersion:       pol.MaxVersion,
		CurvePreferences: pol.Groups,
		CipherSuites:     pol.Suites,
		GetCertificate:   getCert,
		NextProtos:       protos,
		VerifyConnection: opts.VerifyConnection,
	}
	switch {
	case opts.ClientCAs != nil && opts.OptionalClientCert:
		cfg.ClientCAs = opts.ClientCAs
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	case opts.ClientCAs != nil:
		cfg.ClientCAs = opts.ClientCAs
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg
}

// Client returns a client configuration for profile p that trusts roots
// (nil means the system pool) and verifies serverName.
func Client(p Profile, roots *x509.CertPool, serverName string) *tls.Config {
	pol := p.Policy()
	return &tls.Config{
		MinVersion:       pol.MinVersion,
		MaxVersion:       pol.MaxVersion,
		CurvePreferences: pol.Groups,
		CipherSuites:     pol.Suites,
		RootCAs:          roots,
		ServerName:       serverName,
	}
}

// WithClientCertificate adds a client certificate (mTLS) to a client config.
func WithClientCertificate(cfg *tls.Config, cert tls.Certificate) *tls.Config {
	c := cfg.Clone()
	c.Certificates = []tls.Certificate{cert}
	return c
}

// WithSessionCache enables TLS session resumption on a client config.
func WithSessionCache(cfg *tls.Config, capacity int) *tls.Config {
	c := cfg.Clone()
	c.ClientSessionCache = tls.NewLRUClientSessionCache(capacity)
	return c
}

// Probe returns a deliberately permissive client configuration used only to
// grade other endpoints (convoy tls check): it offers exactly the given
// versions, suites and groups, weak ones included, and does not verify the
// peer, so that the caller can test whether a server refuses them. It must
// never carry application data.
func Probe(serverName string, minVersion, maxVersion uint16, suites []uint16, groups []tls.CurveID) *tls.Config {
	return &tls.Config{
		ServerName:         serverName,
		MinVersion:         minVersion,
		MaxVersion:         maxVersion,
		CipherSuites:       suites,
		CurvePreferences:   groups,
		InsecureSkipVerify: true, // verification is done by the caller on the returned chain
	}
}

// MeshALPN names the protocol spoken on inter-node tunnels, so that a
// tunnel endpoint cannot be mistaken for any other TLS service.
const MeshALPN = "convoy-mesh/1"

// MeshOptions are the identity of one host of a distributed job and how it
// judges its peers.
type MeshOptions struct {
	// Certificate is this host's certificate, with its chain.
	Certificate *tls.Certificate
	// Roots holds the job's own CA: the only issuer either end trusts.
	Roots *x509.CertPool
	// Verify runs once the peer's chain has been verified against Roots:
	// it checks which host of the job the certificate names and, on the
	// server side, that the connection comes from that host's address.
	Verify func(tls.ConnectionState) error
}

// MeshClient returns the configuration a host of a distributed job dials a
// peer's tunnel with; peerAddr is the peer's IP address, which its
// certificate must carry. See MeshServer.
func MeshClient(p Profile, peerAddr string, o MeshOptions) *tls.Config {
	cfg := meshConfig(p, o)
	cfg.RootCAs = o.Roots
	cfg.ServerName = peerAddr
	cert := o.Certificate
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	return cfg
}

// MeshServer returns the configuration a host of a distributed job accepts
// its peers' tunnels with.
//
// Both ends are convoy, so the mesh needs no compatibility: TLS 1.3 only,
// mutual authentication against the job's CA only, the profile's key
// exchange groups (the fips profile: P-256 based, and only AES-GCM suites,
// checked after the handshake), no session tickets (every tunnel is fully
// authenticated, and nothing follows the handshake on the wire but the
// tunnel's own records), and ALPN MeshALPN.
func MeshServer(p Profile, o MeshOptions) *tls.Config {
	cfg := meshConfig(p, o)
	cfg.ClientCAs = o.Roots
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.SessionTicketsDisabled = true
	cert := o.Certificate
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	return cfg
}

func meshConfig(p Profile, o MeshOptions) *tls.Config {
	pol := p.Policy()
	verify := o.Verify
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		MaxVersion:       tls.VersionTLS13,
		CurvePreferences: pol.Groups,
		NextProtos:       []string{MeshALPN},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.Version != tls.VersionTLS13 {
				return fmt.Errorf("mesh tunnel negotiated %s, want TLS 1.3", tls.VersionName(cs.Version))
			}
			if !slices.Contains(pol.TLS13Suites, cs.CipherSuite) {
				return fmt.Errorf("mesh tunnel negotiated %s, which the %s profile does not allow", tls.CipherSuiteName(cs.CipherSuite), p)
			}
			if cs.NegotiatedProtocol != MeshALPN {
				return fmt.Errorf("mesh tunnel peer does not speak %s", MeshALPN)
			}
			if verify == nil {
				return errors.New("mesh tunnel: no peer verification configured")
			}
			return verify(cs)
		},
	}
}
