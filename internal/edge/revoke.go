package edge

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"convoy/internal/fsutil"
)

// Device certificate revocation.
//
// DIR/devices.json (0600, replaced atomically) is the device register: every
// certificate `convoy edge devices add` issued, by serial, and which of them
// `convoy edge devices revoke` revoked. Revocation is by serial, so a device
// re-issued after a revoke gets a new serial that works; the name is not
// banned. Certificates issued before convoy kept the register are not in
// it: for those, a revoke also records a cut-off time for the name, and an
// unregistered certificate with that CN whose NotBefore is not after the
// cut-off is revoked too.
//
// The running core reads the register at start and stats it every
// RevocationPoll (a second): polling a stat costs nothing, survives the
// atomic rename that replaces the file (an inotify watch on it would not),
// needs no dependency, and unlike a signal it does not require the revoking
// command to know the core's pid or to be allowed to signal it. A revoked
// certificate is refused in the TLS handshake (tls.Config.VerifyConnection,
// which also runs on session resumption) and in the MQTT CONNECT, and a
// connected device whose certificate is revoked is disconnected at the
// next poll.

// registerFile is the device register in DIR.
const registerFile = "devices.json"

func registerPath(dir string) string { return filepath.Join(dir, registerFile) }
func registerLock(dir string) string { return filepath.Join(dir, ".devices.lock") }

// Register is DIR/devices.json.
type Register struct {
	Devices map[string]*DeviceRecord `json:"devices"`
}

// DeviceRecord is what the register knows about one device name.
type DeviceRecord struct {
	Certificates []CertRecord `json:"certificates"`
	// UnregisteredRevokedBefore revokes certificates with this CN that are
	// not in Certificates (issued before the register existed) and whose
	// NotBefore is not after it.
	UnregisteredRevokedBefore *time.Time `json:"unregistered_revoked_before,omitempty"`
	UnregisteredReason        string     `json:"unregistered_reason,omitempty"`
}

// CertRecord is one issued certificate.
type CertRecord struct {
	Serial    string     `json:"serial"` // hexadecimal
	NotBefore time.Time  `json:"not_before"`
	NotAfter  time.Time  `json:"not_after"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Reason    string     `json:"reason,omitempty"`
}

func serialHex(n *big.Int) string { return n.Text(16) }

// LoadRegister reads the register of the core in dir; a missing file is an
// empty register.
func LoadRegister(dir string) (*Register, error) {
	r := &Register{Devices: map[string]*DeviceRecord{}}
	data, err := os.ReadFile(registerPath(dir))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("%s: %w", registerPath(dir), err)
	}
	if r.Devices == nil {
		r.Devices = map[string]*DeviceRecord{}
	}
	return r, nil
}

// updateRegister changes the register under an exclusive lock, so that
// concurrent `devices add` and `devices revoke` do not lose each other's
// changes, and replaces the file atomically.
func updateRegister(dir string, change func(*Register) error) error {
	lock, err := os.OpenFile(registerLock(dir), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock the device register: %w", err)
	}
	r, err := LoadRegister(dir)
	if err != nil {
		return err
	}
	if err := change(r); err != nil {
		return err
	}
	data, _ := json.MarshalIndent(r, "", "  ")
	return fsutil.WriteFileAtomic(registerPath(dir), append(data, '\n'), 0o600)
}

func (r *Register) record(name string) *DeviceRecord {
	d := r.Devices[name]
	if d == nil {
		d = &DeviceRecord{}
		r.Devices[name] = d
	}
	return d
}

// Revocation says why a certificate is revoked.
type Revocation struct {
	Serial string
	At     time.Time
	Reason string
	// Unregistered: the certificate is not in the register, and is revoked
	// by its name's cut-off.
	Unregistered bool
}

// Revoked reports whether cert, a device certificate with CN = its name,
// is revoked.
func (r *Register) Revoked(cert *x509.Certificate) (Revocation, bool) {
	serial := serialHex(cert.SerialNumber)
	d := r.Devices[cert.Subject.CommonName]
	if d == nil {
		return Revocation{}, false
	}
	for _, c := range d.Certificates {
		if c.Serial == serial {
			if c.RevokedAt == nil {
				return Revocation{}, false
			}
			return Revocation{Serial: serial, At: *c.RevokedAt, Reason: c.Reason}, true
		}
	}
	if cut := d.UnregisteredRevokedBefore; cut != nil && !cert.NotBefore.After(*cut) {
		return Revocation{Serial: serial, At: *cut, Reason: d.UnregisteredReason, Unregistered: true}, true
	}
	return Revocation{}, false
}

// recordIssued adds a newly issued certificate to the register.
func recordIssued(dir, name string, cert *x509.Certificate) error {
	return updateRegister(dir, func(r *Register) error {
		d := r.record(name)
		d.Certificates = append(d.Certificates, CertRecord{Serial: serialHex(cert.SerialNumber), NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC()})
		return nil
	})
}

// RevokeDevice revokes every certificate issued to name so far (see the
// comment at the top of this file) and returns the serials it revoked now;
// serials revoked before are left as they were.
func RevokeDevice(dir, name, reason string, now time.Time) ([]string, error) {
	if !ValidDeviceName(name) {
		return nil, fmt.Errorf("device name %q: use 1 to 64 letters, digits, '_' or '-'", name)
	}
	if _, err := LoadIdentity(dir); err != nil {
		return nil, err
	}
	now = now.UTC()
	var revoked []string
	err := updateRegister(dir, func(r *Register) error {
		d := r.record(name)
		for i := range d.Certificates {
			if c := &d.Certificates[i]; c.RevokedAt == nil {
				c.RevokedAt, c.Reason = &now, reason
				revoked = append(revoked, c.Serial)
			}
		}
		d.UnregisteredRevokedBefore, d.UnregisteredReason = &now, reason
		return nil
	})
	return revoked, err
}

// revocationGuard is the broker's view of the register: reloaded when the
// file changes, consulted in every handshake and CONNECT, and swept over
// the connected devices.
type revocationGuard struct {
	dir    string
	rootCA []byte // DER of the device CA's root, the only acceptable anchor
	log    *slog.Logger
	logged *onceSet

	reg atomic.Pointer[Register]

	mu   sync.Mutex // held by reload
	seen fileStamp
}

// fileStamp identifies a version of the register file: it is replaced by
// rename, so a new version is a new inode.
type fileStamp struct {
	ino   uint64
	mtime time.Time
	size  int64
	ok    bool
}

func statStamp(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var ino uint64
	if st != nil {
		ino = st.Ino
	}
	return fileStamp{ino: ino, mtime: fi.ModTime(), size: fi.Size(), ok: true}
}

func newRevocationGuard(dir string, rootCA []byte, log *slog.Logger) (*revocationGuard, error) {
	g := &revocationGuard{dir: dir, rootCA: rootCA, log: log, logged: newOnceSet(4096)}
	g.seen = statStamp(registerPath(dir))
	r, err := LoadRegister(dir)
	if err != nil {
		return nil, fmt.Errorf("device register: %w", err)
	}
	g.reg.Store(r)
	return g, nil
}

// reload reads the register again if the file changed. A register that
// does not parse keeps the previous one in force (revocations only
// accumulate, so the previous one revokes no more than the damaged one
// meant to) and is logged.
func (g *revocationGuard) reload() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	stamp := statStamp(registerPath(g.dir))
	if stamp == g.seen {
		return false
	}
	r, err := LoadRegister(g.dir)
	if err != nil {
		g.log.Error("device register does not load; the previous one stays in force", "err", err)
		return false
	}
	g.seen = stamp
	g.reg.Store(r)
	g.log.Info("device register reloaded", "devices", len(r.Devices))
	return true
}

var errRevoked = errors.New("device certificate revoked")

// check is the broker's verdict on a device's verified chain: anchored at
// the device CA, a valid device name as CN, not revoked.
func (g *revocationGuard) check(chains [][]*x509.Certificate) error {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return errors.New("no verified device certificate chain")
	}
	chain := chains[0]
	if !bytes.Equal(chain[len(chain)-1].Raw, g.rootCA) {
		return errors.New("device certificate chain does not end at the device CA")
	}
	leaf := chain[0]
	if !ValidDeviceName(leaf.Subject.CommonName) {
		return errIdentity
	}
	rev, ok := g.reg.Load().Revoked(leaf)
	if ok && rev.Unregistered && g.reload() {
		// A certificate issued after the last reload is not in this
		// register yet, and one re-issued right after a revoke is
		// backdated before its name's cut-off: read the register again
		// before refusing it.
		rev, ok = g.reg.Load().Revoked(leaf)
	}
	if ok {
		if g.logged.first(rev.Serial) {
			g.log.Warn("device refused: certificate revoked (logged once per certificate)", "device", leaf.Subject.CommonName,
				"serial", rev.Serial, "revoked_at", rev.At, "reason", rev.Reason)
		}
		return errRevoked
	}
	return nil
}

// verifyConnection is the broker's tls.Config.VerifyConnection. crypto/tls
// runs it after verifying the chain against ClientCAs, and also when a
// session is resumed (VerifyPeerCertificate is not run then).
func (g *revocationGuard) verifyConnection(cs tls.ConnectionState) error {
	return g.check(cs.VerifiedChains)
}

// peerChains returns the verified chains of a client's TLS connection.
func peerChains(cl *mqtt.Client) [][]*x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	return tc.ConnectionState().VerifiedChains
}

// sweep disconnects every connected device that check now refuses.
func (g *revocationGuard) sweep(server *mqtt.Server, ipcID string) {
	for _, cl := range server.Clients.GetAll() {
		if cl.Net.Listener == ipcID || cl.Closed() {
			continue
		}
		if err := g.check(peerChains(cl)); err != nil {
			g.log.Warn("device disconnected", "device", cl.ID, "remote", cl.Net.Remote, "reason", err)
			server.DisconnectClient(cl, packets.ErrNotAuthorized)
		}
	}
}

// run reloads the register every poll and sweeps the connected devices.
// The sweep runs on every tick, not only after a change: a device whose
// handshake passed just before a reload may join the client list after
// the sweep that followed it.
func (g *revocationGuard) run(ctx context.Context, server *mqtt.Server, ipcID string, poll time.Duration) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g.reload()
		g.sweep(server, ipcID)
	}
}

// DeviceCert is one certificate of the register.
type DeviceCert struct {
	Device string
	CertRecord
}

// Certificates lists the register's certificates by device name, each
// device's in the order they were issued.
func (r *Register) Certificates() []DeviceCert {
	var out []DeviceCert
	for _, name := range slices.Sorted(maps.Keys(r.Devices)) {
		for _, c := range r.Devices[name].Certificates {
			out = append(out, DeviceCert{Device: name, CertRecord: c})
		}
	}
	return out
}

// ListDevices reads the register of the core in dir.
func ListDevices(dir string) (*Register, error) {
	if _, err := LoadIdentity(dir); err != nil {
		return nil, err
	}
	return LoadRegister(dir)
}
