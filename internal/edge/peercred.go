package edge

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// PeerCredListener accepts Unix socket connections only from processes
// whose user ID (SO_PEERCRED, set by the kernel at connect and not
// forgeable by the peer) is in Allow. A refused connection is closed at
// Accept, so the MQTT broker never reads a byte from it.
type PeerCredListener struct {
	net.Listener
	Allow []uint32
	Log   *slog.Logger

	metrics *metrics
}

// Accept returns the next connection from an allowed peer.
func (l *PeerCredListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		if err != nil {
			l.Log.Warn("ipc connection refused: no peer credentials", "err", err)
			l.metrics.ipcConnRefused("no_peer_credentials")
			c.Close()
			continue
		}
		if !slices.Contains(l.Allow, cred.Uid) {
			l.Log.Warn("ipc connection refused: uid not allowed", "uid", cred.Uid, "pid", cred.Pid, "allowed_uids", l.Allow)
			l.metrics.ipcConnRefused("uid_not_allowed")
			c.Close()
			continue
		}
		return c, nil
	}
}

func peerCred(c net.Conn) (*unix.Ucred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("%T is not a Unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}

// ListenIPC creates the component socket at path (mode 0660, replacing a
// stale one) and wraps it in a PeerCredListener that admits root, the
// owner of ownerDir and extra.
func ListenIPC(path, ownerDir string, extra []uint32, log *slog.Logger) (*PeerCredListener, error) {
	fi, err := os.Stat(ownerDir)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, errors.New("cannot read the owner of " + ownerDir)
	}
	allow := []uint32{0}
	for _, u := range append([]uint32{st.Uid}, extra...) {
		if !slices.Contains(allow, u) {
			allow = append(allow, u)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Until this chmod the socket has the umask's mode; the peer check
	// below holds either way.
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return &PeerCredListener{Listener: ln, Allow: allow, Log: log}, nil
}

// shareSocket gives the IPC socket to group gid (mode 0660 already lets the
// group connect); the peer-credential check still decides who is admitted.
func shareSocket(path string, gid uint32) error {
	if gid == uint32(os.Getegid()) {
		return nil
	}
	if err := os.Chown(path, -1, int(gid)); err != nil {
		return fmt.Errorf("give the IPC socket %s to the component group %d: %w", path, gid, err)
	}
	return nil
}
