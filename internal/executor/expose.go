package executor

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExposeMark is the socket mark (SO_MARK) a connection to a host's exposed
// port (JobSpec.Expose: a model server's 8080) must carry; the job's
// firewall drops every other attempt. Only convoy's own sockets (the
// runtime router, the health checks) set it, through DialExposed. Setting
// a mark needs CAP_NET_ADMIN, so a process in convoy's network namespace
// that is not root — another user's shell, a compromised service — cannot
// reach a model container, whose plain-HTTP port would otherwise be open
// to every local process. (Root can do anything here anyway: enter the
// container's namespace, read its memory.) The value is distinct from the
// mesh agents' marks (internal/mesh) and spells "cvex".
const ExposeMark = 0x63766578

// DialExposed is a net.Dialer Control function that sets ExposeMark on the
// socket before it connects: use it for every connection to an exposed
// port.
func DialExposed(_, _ string, c syscall.RawConn) error {
	var err error
	if cerr := c.Control(func(fd uintptr) {
		err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, ExposeMark)
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("set SO_MARK for a connection to an exposed port (needs CAP_NET_ADMIN): %w", err)
	}
	return nil
}
