package mesh

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// Exporter labels (RFC 8446 §7.5) of the record keys, one per direction.
const (
	labelClientWrite = "EXPORTER-convoy-mesh-v1 client write"
	labelServerWrite = "EXPORTER-convoy-mesh-v1 server write"
)

// recordBoundaryConn hands crypto/tls the handshake one TLS record at a
// time and never a byte more, so that when the handshake is done nothing
// of the tunnel's own records sits in tls.Conn's buffer: from then on the
// tunnel reads the TCP connection directly.
type recordBoundaryConn struct {
	net.Conn
	hdr  [5]byte
	hn   int // bytes of hdr read
	left int // bytes left in the current record's body
}

func (b *recordBoundaryConn) Read(p []byte) (int, error) {
	if b.left == 0 {
		if len(p) > len(b.hdr)-b.hn {
			p = p[:len(b.hdr)-b.hn]
		}
		n, err := b.Conn.Read(p)
		copy(b.hdr[b.hn:], p[:n])
		b.hn += n
		if b.hn == len(b.hdr) {
			b.left = int(binary.BigEndian.Uint16(b.hdr[3:5]))
			b.hn = 0
		}
		return n, err
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.Conn.Read(p)
	b.left -= n
	return n, err
}

// tunnel is one authenticated, encrypted TCP connection between two hosts
// of a job, past its handshake. One goroutine reads it (recv), and writes
// (send) are serialized.
type tunnel struct {
	conn net.Conn
	peer peerIdentity
	tls  tls.ConnectionState

	recv *opener

	wmu  sync.Mutex
	send *sealer
	wbuf []byte

	stats *stats // may be nil
}

// stats counts what an agent's tunnels carried.
type stats struct {
	conns                atomic.Int64
	bytesOut, recordsOut atomic.Int64
	bytesIn, recordsIn   atomic.Int64
}

// handshake runs the TLS handshake on raw and derives the record keys.
// verify runs inside it (tls.Config.VerifyConnection) and returns who the
// peer is.
func handshake(ctx context.Context, raw net.Conn, cfg *tls.Config, client bool) (*tunnel, error) {
	bc := &recordBoundaryConn{Conn: raw}
	var tc *tls.Conn
	if client {
		tc = tls.Client(bc, cfg)
	} else {
		tc = tls.Server(bc, cfg)
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	cs := tc.ConnectionState()
	cw, err := cs.ExportKeyingMaterial(labelClientWrite, nil, keyLen)
	if err != nil {
		return nil, fmt.Errorf("derive tunnel keys: %w", err)
	}
	sw, err := cs.ExportKeyingMaterial(labelServerWrite, nil, keyLen)
	if err != nil {
		return nil, fmt.Errorf("derive tunnel keys: %w", err)
	}
	if bc.left != 0 || bc.hn != 0 {
		return nil, errors.New("mesh tunnel: handshake ended inside a TLS record")
	}
	wkey, rkey := sw, cw
	if client {
		wkey, rkey = cw, sw
	}
	t := &tunnel{conn: raw, tls: cs}
	if t.send, err = newSealer(wkey); err != nil {
		return nil, err
	}
	if t.recv, err = newOpener(raw, rkey); err != nil {
		return nil, err
	}
	clear(cw)
	clear(sw)
	return t, nil
}

// write sends one record.
func (t *tunnel) write(typ recordType, payload []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if need := headerLen + sealOverhead + len(payload); cap(t.wbuf) < need {
		if t.wbuf != nil {
			putBuf(t.wbuf)
		}
		t.wbuf = getBuf(need)[:0]
	}
	rec, err := t.send.seal(t.wbuf[:0], typ, payload)
	if err != nil {
		return err
	}
	if t.stats != nil {
		t.stats.bytesOut.Add(int64(len(payload)))
		t.stats.recordsOut.Add(1)
	}
	_, err = t.conn.Write(rec)
	return err
}

func (t *tunnel) close() error { return t.conn.Close() }

// release gives back the large buffers of a tunnel that goes idle.
func (t *tunnel) release() {
	t.wmu.Lock()
	if t.wbuf != nil {
		putBuf(t.wbuf)
	}
	t.wbuf = nil
	t.wmu.Unlock()
	t.recv.release()
}

// encodePorts is the payload of recPorts.
func encodePorts(ports []uint16) []byte {
	b := make([]byte, 2*len(ports))
	for i, p := range ports {
		binary.BigEndian.PutUint16(b[2*i:], p)
	}
	return b
}

// decodePorts reads a recPorts payload: ascending, non-zero ports.
func decodePorts(b []byte) ([]uint16, error) {
	if len(b)%2 != 0 {
		return nil, errors.New("mesh tunnel: ports record of odd length")
	}
	ports := make([]uint16, len(b)/2)
	for i := range ports {
		ports[i] = binary.BigEndian.Uint16(b[2*i:])
		if ports[i] == 0 || i > 0 && ports[i] <= ports[i-1] {
			return nil, errors.New("mesh tunnel: ports record not ascending")
		}
	}
	return ports, nil
}

// decodeOpen reads a recOpen payload.
func decodeOpen(b []byte) (uint16, error) {
	if len(b) != 2 {
		return 0, errors.New("mesh tunnel: open record of wrong length")
	}
	p := binary.BigEndian.Uint16(b)
	if p == 0 {
		return 0, errors.New("mesh tunnel: open record names port 0")
	}
	return p, nil
}
