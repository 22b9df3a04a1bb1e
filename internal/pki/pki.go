// Package pki is convoy's certificate authority: it keeps the CA key at rest
// (mode 0600), issues short-lived server and client certificates, issues
// per-purpose sub-CAs (edge devices), creates ephemeral CAs that live only in
// memory (one per distributed job, see NewEphemeralCA), and renews the
// serving certificate before it expires (see Rotator).
//
// It is written on crypto/x509 directly: the job is small (one CA, a handful of
// templates) and a full CA server such as step-ca would be a second daemon to
// run and secure.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"convoy/internal/fsutil"
)

// CA issues certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// Chain is the DER of Cert followed by its issuers (for sub-CAs).
	Chain [][]byte
}

const (
	caFile      = "ca-key.pem" // key and certificate, 0600
	caPublic    = "ca.pem"     // certificate only, for clients
	caLifetime  = 10 * 365 * 24 * time.Hour
	backdate    = time.Hour // tolerate peers whose clocks run behind (then SigV4 says RequestTimeTooSkewed, not a TLS error)
	keyPEMType  = "PRIVATE KEY"
	certPEMType = "CERTIFICATE"
)

// LoadOrCreateCA returns the CA kept in dir, creating it on first use. The key
// and certificate live in one file written atomically, so a crash at any
// point leaves either no CA or a whole one. It also (re)writes dir/ca.pem,
// the public certificate clients trust.
func LoadOrCreateCA(dir, commonName string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pki dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil { // an existing one too
		return nil, fmt.Errorf("pki dir: %w", err)
	}
	path := filepath.Join(dir, caFile)
	ca, err := LoadCA(path, path)
	if errors.Is(err, os.ErrNotExist) {
		ca, err = newRootCA(commonName, caLifetime, false)
		if err != nil {
			return nil, err
		}
		var pemBytes []byte
		pemBytes, err = encodeKeyAndChain(ca.Key, ca.Chain)
		if err != nil {
			return nil, err
		}
		if err = fsutil.WriteFileAtomic(path, pemBytes, 0o600); err != nil {
			return nil, fmt.Errorf("write CA: %w", err)
		}
	}
	if err != nil {
		return nil, err
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(dir, caPublic), ca.PEM(), 0o644); err != nil {
		return nil, fmt.Errorf("write CA certificate: %w", err)
	}
	return ca, nil
}

// PrivateFile refuses a private key file that its owner's group or others
// may read or write, as ssh does: such a key may have been read, and
// convoy would otherwise go on signing or serving with it.
func PrivateFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("private key file %s has mode %04o, open to its group or others: make it private (chmod 600 %s), and replace the key if others may have read it", path, perm, path)
	}
	return nil
}

// PublicPath is where LoadOrCreateCA puts the CA certificate for clients.
func PublicPath(dir string) string { return filepath.Join(dir, caPublic) }

// LoadCA reads a user-supplied CA certificate and key (PEM; both may be the
// same file).
func LoadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	keyPEM := certPEM
	if keyPath != certPath {
		if keyPEM, err = os.ReadFile(keyPath); err != nil {
			return nil, fmt.Errorf("read CA key: %w", err)
		}
	}
	if err := PrivateFile(keyPath); err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA %s: %w", certPath, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key in %s cannot sign", keyPath)
	}
	if !pair.Leaf.IsCA {
		return nil, fmt.Errorf("certificate in %s is not a CA (basicConstraints CA:FALSE)", certPath)
	}
	return &CA{Cert: pair.Leaf, Key: signer, Chain: pair.Certificate}, nil
}

// PEM returns the CA certificate chain as PEM.
func (ca *CA) PEM() []byte {
	var out []byte
	for _, der := range ca.Chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: der})...)
	}
	return out
}

// Pool returns a cert pool holding the CA's root (last in the chain).
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	root, err := x509.ParseCertificate(ca.Chain[len(ca.Chain)-1])
	if err == nil {
		pool.AddCert(root)
	}
	return pool
}

// NewEphemeralCA creates a root CA that exists only in the caller's memory
// and may sign leaf certificates only (no sub-CAs): the trust anchor of one
// distributed job's hosts. Nothing of it is written anywhere; dropping the
// returned value discards its key, after which no further certificate can
// ever chain to it.
func NewEphemeralCA(commonName string, lifetime time.Duration) (*CA, error) {
	if lifetime <= 0 {
		return nil, errors.New("ephemeral CA: lifetime must be positive")
	}
	return newRootCA(commonName, lifetime, true)
}

func newRootCA(commonName string, lifetime time.Duration, leavesOnly bool) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"convoy"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1, // root → per-purpose sub-CA → leaf
	}
	if leavesOnly {
		tmpl.MaxPathLen, tmpl.MaxPathLenZero = 0, true
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, Chain: [][]byte{der}}, nil
}

// Purpose says what a leaf certificate is for.
type Purpose int

const (
	ServerAuth Purpose = iota
	ClientAuth
	// PeerAuth is both: mesh peers and edge devices that dial and accept.
	PeerAuth
)

// LeafRequest describes a certificate to issue.
type LeafRequest struct {
	CommonName string
	// Names are DNS names or IP addresses for the SAN extension.
	Names []string
	// URIs are URI SANs: identities that are neither host names nor
	// addresses (convoy://job/<job>/host/<host> for a job's host).
	URIs     []*url.URL
	Purpose  Purpose
	Lifetime time.Duration
	// Key is the subject's public key; nil generates a new P-256 key that is
	// returned with the certificate.
	Key crypto.PublicKey
}

// Issue signs a leaf certificate and returns it with its chain (and its
// private key when the CA generated it).
func (ca *CA) Issue(req LeafRequest) (*tls.Certificate, error) {
	if req.Lifetime <= 0 {
		return nil, errors.New("issue certificate: lifetime must be positive")
	}
	var priv crypto.Signer
	pub := req.Key
	if pub == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		priv, pub = k, k.Public()
	}
	now := time.Now()
	notAfter := now.Add(req.Lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: req.CommonName},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	switch req.Purpose {
	case ServerAuth:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case ClientAuth:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case PeerAuth:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	for _, n := range req.Names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	tmpl.URIs = req.URIs
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %q: %w", req.CommonName, err)
	}
	leaf, _ := x509.ParseCertificate(der)
	chain := append([][]byte{der}, ca.Chain...)
	return &tls.Certificate{Certificate: chain, PrivateKey: priv, Leaf: leaf}, nil
}

// IssueSubCA creates an intermediate CA for one purpose (a training job's
// mesh, the edge devices of an account), so that a credential issued for that
// purpose is useless anywhere else.
func (ca *CA) IssueSubCA(commonName string, lifetime time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"convoy"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue sub-CA %q: %w", commonName, err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, Key: key, Chain: append([][]byte{der}, ca.Chain...)}, nil
}

// EncodeCertificate returns a certificate's private key and chain as PEM.
func EncodeCertificate(c *tls.Certificate) ([]byte, error) {
	signer, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("encode certificate: no private key")
	}
	return encodeKeyAndChain(signer, c.Certificate)
}

func encodeKeyAndChain(key crypto.Signer, chain [][]byte) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: keyPEMType, Bytes: der})
	for _, c := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: certPEMType, Bytes: c})...)
	}
	return out, nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return n.Add(n, big.NewInt(1))
}
