package edge

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"convoy/internal/fsutil"
	"convoy/internal/pki"
)

// DeviceCertLifetime is how long a device certificate is valid: a year, so
// that a lost device's credential dies by itself within a year even if
// nobody revokes it, while a device that is out of reach for months does
// not lose its identity. Re-issue with `convoy edge devices add`.
const DeviceCertLifetime = 365 * 24 * time.Hour

// brokerCertLifetime is the broker's serving certificate; it is renewed
// after two thirds of it while the core runs (pki.Rotator).
const brokerCertLifetime = 30 * 24 * time.Hour

var (
	deviceNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)
	coreNameRE   = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,64}$`)
)

// ValidDeviceName reports whether name may name a device: it becomes a
// certificate CN, an MQTT client ID and a topic level, so it is kept to
// characters that mean nothing in any of them.
func ValidDeviceName(name string) bool { return deviceNameRE.MatchString(name) }

// Identity is what `convoy edge init` decided about the core, kept in
// DIR/edge.json.
type Identity struct {
	// Name is the core's name: a DNS SAN of the broker certificate and the
	// folder its uploads go to in the cloud bucket.
	Name string `json:"name"`
	// IPs are extra IP SANs of the broker certificate.
	IPs []string `json:"ips,omitempty"`
}

// Names are the broker certificate's SANs.
func (id Identity) Names() []string {
	names := []string{"localhost", "127.0.0.1", "::1", id.Name}
	return append(names, id.IPs...)
}

func identityPath(dir string) string { return filepath.Join(dir, "edge.json") }
func deviceCADir(dir string) string  { return filepath.Join(dir, "pki", "devices") }
func serverCADir(dir string) string  { return filepath.Join(dir, "pki", "broker") }
func brokerCertPath(dir string) string {
	return filepath.Join(dir, "pki", "broker", "broker-cert.pem")
}

// Init creates the core's data directory (0700) and its PKI, or checks an
// existing one: two CAs, so that neither credential can stand in for the
// other — the device CA signs device (client) certificates and is the only
// issuer the broker accepts from devices; the broker CA signs the broker's
// serving certificate and is what devices trust (ca.crt).
func Init(dir string, id Identity) error {
	if !coreNameRE.MatchString(id.Name) {
		return fmt.Errorf("core name %q: use 1 to 64 letters, digits, '.', '_' or '-'", id.Name)
	}
	for _, ip := range id.IPs {
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("--ip %q is not an IP address", ip)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if _, err := pki.LoadOrCreateCA(deviceCADir(dir), "convoy edge device CA "+id.Name); err != nil {
		return fmt.Errorf("device CA: %w", err)
	}
	if _, err := pki.LoadOrCreateCA(serverCADir(dir), "convoy edge broker CA "+id.Name); err != nil {
		return fmt.Errorf("broker CA: %w", err)
	}
	data, _ := json.MarshalIndent(id, "", "  ")
	return fsutil.WriteFileAtomic(identityPath(dir), append(data, '\n'), 0o600)
}

// LoadIdentity reads DIR/edge.json.
func LoadIdentity(dir string) (Identity, error) {
	var id Identity
	data, err := os.ReadFile(identityPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return id, fmt.Errorf("%s is not an edge core directory: run `convoy edge init --data %s` first", dir, dir)
	}
	if err != nil {
		return id, err
	}
	if err := json.Unmarshal(data, &id); err != nil {
		return id, fmt.Errorf("%s: %w", identityPath(dir), err)
	}
	return id, nil
}

func loadCA(dir string) (*pki.CA, error) {
	p := filepath.Join(dir, "ca-key.pem")
	return pki.LoadCA(p, p)
}

// DeviceFiles are where AddDevice wrote a device's credentials.
type DeviceFiles struct {
	Cert, Key, CA string
	NotAfter      time.Time
	Serial        string // hexadecimal, as in the device register
}

// AddDevice issues a client certificate with CN=name from the device CA of
// the core in dir, and writes outDir/NAME.crt, NAME.key (0600) and ca.crt
// (the broker CA, which the device uses to verify the broker), and records
// the certificate's serial in the device register (revoke.go). It refuses
// to overwrite an existing key.
func AddDevice(dir, name, outDir string, lifetime time.Duration) (DeviceFiles, error) {
	var f DeviceFiles
	if !ValidDeviceName(name) {
		return f, fmt.Errorf("device name %q: use 1 to 64 letters, digits, '_' or '-'", name)
	}
	if _, err := LoadIdentity(dir); err != nil {
		return f, err
	}
	devCA, err := loadCA(deviceCADir(dir))
	if err != nil {
		return f, fmt.Errorf("device CA: %w", err)
	}
	brokerCA, err := loadCA(serverCADir(dir))
	if err != nil {
		return f, fmt.Errorf("broker CA: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return f, err
	}
	f = DeviceFiles{
		Cert: filepath.Join(outDir, name+".crt"),
		Key:  filepath.Join(outDir, name+".key"),
		CA:   filepath.Join(outDir, "ca.crt"),
	}
	if _, err := os.Stat(f.Key); err == nil {
		return f, fmt.Errorf("%s exists: remove it to re-issue device %q, or choose another --out", f.Key, name)
	}
	c, err := devCA.Issue(pki.LeafRequest{CommonName: name, Purpose: pki.ClientAuth, Lifetime: lifetime})
	if err != nil {
		return f, err
	}
	f.NotAfter, f.Serial = c.Leaf.NotAfter, serialHex(c.Leaf.SerialNumber)
	// Registered before the files exist: a certificate nobody can use yet
	// is never one the broker does not know.
	if err := recordIssued(dir, name, c.Leaf); err != nil {
		return f, fmt.Errorf("record the certificate in the device register: %w", err)
	}
	keyAndChain, err := pki.EncodeCertificate(c)
	if err != nil {
		return f, err
	}
	// EncodeCertificate puts the key first, then the chain: split them so
	// that the key alone is in the 0600 file.
	key, chain := splitPEM(keyAndChain)
	if err := fsutil.WriteFileAtomic(f.Key, key, 0o600); err != nil {
		return f, err
	}
	if err := fsutil.WriteFileAtomic(f.Cert, chain, 0o644); err != nil {
		return f, err
	}
	if err := fsutil.WriteFileAtomic(f.CA, brokerCA.PEM(), 0o644); err != nil {
		return f, err
	}
	return f, nil
}

// deviceCAPool is the pool the broker verifies device certificates with,
// and the DER of its one root.
func deviceCAPool(dir string) (*x509.CertPool, []byte, error) {
	ca, err := loadCA(deviceCADir(dir))
	if err != nil {
		return nil, nil, fmt.Errorf("device CA (run `convoy edge init`?): %w", err)
	}
	return ca.Pool(), ca.Chain[len(ca.Chain)-1], nil
}

func splitPEM(data []byte) (key, certs []byte) {
	for len(data) > 0 {
		block, rest := pem.Decode(data)
		if block == nil {
			break
		}
		enc := pem.EncodeToMemory(block)
		if block.Type == "CERTIFICATE" {
			certs = append(certs, enc...)
		} else {
			key = append(key, enc...)
		}
		data = rest
	}
	return key, certs
}
