package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"convoy/internal/fsutil"
)

// CertSource serves a certificate that may change while the process runs.
type CertSource interface {
	// GetCertificate is a tls.Config.GetCertificate.
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Leaf is the certificate currently served.
	Leaf() *x509.Certificate
	// Run keeps the certificate fresh until ctx is done.
	Run(ctx context.Context)
}

// Rotator serves a leaf issued by a CA and re-issues it when two thirds of
// its lifetime have passed, so a fresh certificate is always served well
// before the old one expires, without a restart. The current leaf is kept in
// a file (mode 0600) so a restart reuses it.
type Rotator struct {
	ca   *CA
	req  LeafRequest
	path string
	log  *slog.Logger
	cur  atomic.Pointer[tls.Certificate]
	// OnRenew, if set, is called after each renewal (metrics).
	OnRenew func(*x509.Certificate)
}

// NewRotator returns a rotator for req, reusing the leaf stored at path when
// it is still good for the same names.
func NewRotator(ca *CA, req LeafRequest, path string, log *slog.Logger) (*Rotator, error) {
	r := &Rotator{ca: ca, req: req, path: path, log: log}
	if c, err := r.load(); err == nil && !r.due(c.Leaf, time.Now()) {
		r.cur.Store(c)
		return r, nil
	}
	if err := r.renew(); err != nil {
		return nil, err
	}
	return r, nil
}

// GetCertificate implements CertSource.
func (r *Rotator) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// Leaf implements CertSource.
func (r *Rotator) Leaf() *x509.Certificate { return r.cur.Load().Leaf }

// renewAt is when a leaf should be replaced: after two thirds of its life.
func renewAt(leaf *x509.Certificate) time.Time {
	start := leaf.NotBefore.Add(backdate)
	return start.Add(leaf.NotAfter.Sub(start) * 2 / 3)
}

func (r *Rotator) due(leaf *x509.Certificate, now time.Time) bool {
	if !now.Before(renewAt(leaf)) {
		return true
	}
	// A leaf from another CA or for other names (the listen address
	// changed) is replaced at once.
	if !bytes.Equal(leaf.RawIssuer, r.ca.Cert.RawSubject) || leaf.CheckSignatureFrom(r.ca.Cert) != nil {
		return true
	}
	var names []string
	names = append(names, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		names = append(names, ip.String())
	}
	want := slices.Clone(r.req.Names)
	slices.Sort(names)
	slices.Sort(want)
	return !slices.Equal(names, want)
}

// Run implements CertSource.
func (r *Rotator) Run(ctx context.Context) {
	for {
		wait := time.Until(renewAt(r.Leaf()))
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := r.renew(); err != nil {
			r.log.Error("renew serving certificate; retrying in 10s", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
		}
	}
}

func (r *Rotator) renew() error {
	c, err := r.ca.Issue(r.req)
	if err != nil {
		return err
	}
	if r.path != "" {
		pemBytes, err := EncodeCertificate(c)
		if err != nil {
			return err
		}
		if err := fsutil.WriteFileAtomic(r.path, pemBytes, 0o600); err != nil {
			return fmt.Errorf("store serving certificate: %w", err)
		}
	}
	r.cur.Store(c)
	r.log.Info("serving certificate issued", "serial", c.Leaf.SerialNumber.Text(16), "not_after", c.Leaf.NotAfter.UTC(), "names", r.req.Names)
	if r.OnRenew != nil {
		r.OnRenew(c.Leaf)
	}
	return nil
}

func (r *Rotator) load() (*tls.Certificate, error) {
	if r.path == "" {
		return nil, os.ErrNotExist
	}
	// A stored key others could read is not reused: a new one is issued.
	if err := PrivateFile(r.path); err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			r.log.Warn("not reusing the stored serving certificate; issuing a new one", "err", err)
		}
		return nil, err
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, err
	}
	c, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// FileSource serves a user-supplied certificate and key, and reloads them
// when the files change (checked every few seconds), so that an external
// renewer (certbot, cert-manager, step) needs no restart.
type FileSource struct {
	certPath, keyPath string
	log               *slog.Logger
	cur               atomic.Pointer[tls.Certificate]
	stamp             string
	OnRenew           func(*x509.Certificate)
}

// NewFileSource loads certPath and keyPath (PEM).
func NewFileSource(certPath, keyPath string, log *slog.Logger) (*FileSource, error) {
	s := &FileSource{certPath: certPath, keyPath: keyPath, log: log}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *FileSource) fileStamp() string {
	var b []byte
	for _, p := range []string{s.certPath, s.keyPath} {
		if fi, err := os.Stat(p); err == nil {
			b = fmt.Appendf(b, "%d/%d/%o;", fi.ModTime().UnixNano(), fi.Size(), fi.Mode().Perm())
		}
	}
	return string(b)
}

func (s *FileSource) reload() error {
	stamp := s.fileStamp()
	if err := PrivateFile(s.keyPath); err != nil {
		return err
	}
	c, err := tls.LoadX509KeyPair(s.certPath, s.keyPath)
	if err != nil {
		return fmt.Errorf("load certificate %s / key %s: %w", s.certPath, s.keyPath, err)
	}
	if time.Now().After(c.Leaf.NotAfter) {
		return errors.New("certificate " + s.certPath + " has expired")
	}
	s.cur.Store(&c)
	s.stamp = stamp
	if s.OnRenew != nil {
		s.OnRenew(c.Leaf)
	}
	return nil
}

// GetCertificate implements CertSource.
func (s *FileSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// Leaf implements CertSource.
func (s *FileSource) Leaf() *x509.Certificate { return s.cur.Load().Leaf }

// Run implements CertSource.
func (s *FileSource) Run(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if s.fileStamp() == s.stamp {
			continue
		}
		if err := s.reload(); err != nil {
			// Said once per change of the files (their times, sizes and
			// modes), not every tick.
			s.stamp = s.fileStamp()
			s.log.Error("reload certificate; keeping the current one", "err", err)
			continue
		}
		s.log.Info("certificate reloaded from file", "path", s.certPath, "not_after", s.Leaf().NotAfter.UTC())
	}
}
