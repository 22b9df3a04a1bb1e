package mesh

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// relay copies an application's TCP connection and a stream tunnel into
// each other until both directions have ended, and mirrors how each
// direction ends: end of file becomes recFin and then a TCP half-close on
// the far side; a reset or error becomes recReset and then a TCP reset on
// the far side; a tunnel that fails (bad record, truncation) resets the
// application's connection. An application never sees a clean end of
// file that its peer did not send.
//
// It closes app. When both directions ended cleanly it returns nil, and
// the tunnel, whose records are then in step at both ends, may carry
// another connection; otherwise it closes the tunnel too and returns the
// first error that made it abort.
func relay(app *net.TCPConn, t *tunnel) error {
	var (
		once    sync.Once
		abortEr error
	)
	abort := func(err error) {
		once.Do(func() {
			abortEr = err
			app.SetLinger(0) // close with RST
			app.Close()
			t.close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := upstream(app, t); err != nil {
			abort(err)
		}
	}()
	if err := downstream(app, t); err != nil {
		abort(err)
	}
	<-done
	once.Do(func() {
		app.SetLinger(-1) // see abortOnExit
		app.Close()
		t.release()
	})
	return abortEr
}

// upstream copies app to the tunnel. It reads smallPayload at a time
// until a read fills the buffer, then maxPayload: a bulk transfer gets
// large records, a chatty connection keeps a small buffer.
func upstream(app *net.TCPConn, t *tunnel) error {
	buf := getBuf(smallPayload)[:smallPayload]
	defer func() { putBuf(buf) }()
	for {
		n, err := app.Read(buf)
		if n > 0 {
			if werr := t.write(recData, buf[:n]); werr != nil {
				return fmt.Errorf("write to tunnel: %w", werr)
			}
			if n == len(buf) && n < maxPayload {
				putBuf(buf)
				buf = getBuf(maxPayload)[:maxPayload]
			}
		}
		if err == io.EOF {
			if werr := t.write(recFin, nil); werr != nil {
				return fmt.Errorf("write to tunnel: %w", werr)
			}
			return nil
		}
		if err != nil {
			t.write(recReset, []byte{resetAborted})
			return fmt.Errorf("read from application: %w", err)
		}
	}
}

// errPeerReset is how downstream reports a recReset.
type errPeerReset byte

func (e errPeerReset) Error() string {
	switch byte(e) {
	case resetRefused:
		return "peer refused: nothing listens on the port"
	case resetProtocol:
		return "peer reported a tunnel protocol error"
	}
	return "peer reset the connection"
}

// downstream copies the tunnel to app.
func downstream(app *net.TCPConn, t *tunnel) error {
	for {
		typ, p, err := t.recv.next()
		if err != nil {
			return err
		}
		if t.stats != nil {
			t.stats.bytesIn.Add(int64(len(p)))
			t.stats.recordsIn.Add(1)
		}
		switch typ {
		case recData:
			if _, err := app.Write(p); err != nil {
				t.write(recReset, []byte{resetAborted})
				return fmt.Errorf("write to application: %w", err)
			}
		case recFin:
			if err := app.CloseWrite(); err != nil && !errors.Is(err, syscall.ENOTCONN) {
				return fmt.Errorf("half-close application connection: %w", err)
			}
			return nil
		case recReset:
			reason := resetAborted
			if len(p) == 1 {
				reason = p[0]
			}
			return errPeerReset(reason)
		default:
			t.write(recReset, []byte{resetProtocol})
			return fmt.Errorf("mesh tunnel: unexpected %s record in a stream", typ)
		}
	}
}
