package mesh

import "sync"

// Buffers come from pools in a few size classes and go back when a
// tunnel goes idle, so that a connection holds large buffers only while it
// moves bulk data: an interactive connection stays in the smallest class,
// a bulk one grows to records of maxPayload (large records are what makes
// the data path cheap, see doc.go), and hundreds of idle tunnels cost
// little memory.
var bufClasses = []*bufClass{
	newBufClass(smallPayload + headerLen + sealOverhead),
	newBufClass(2 * (smallPayload + headerLen + sealOverhead)),
	newBufClass(maxRecordLen),
	newBufClass(2 * maxRecordLen),
}

// smallPayload is the read size a connection starts with.
const smallPayload = 64 << 10

type bufClass struct {
	size int
	pool sync.Pool
}

func newBufClass(size int) *bufClass {
	c := &bufClass{size: size}
	c.pool.New = func() any { b := make([]byte, size); return &b }
	return c
}

// getBuf returns a buffer of at least n bytes (its length is its class's
// size).
func getBuf(n int) []byte {
	for _, c := range bufClasses {
		if n <= c.size {
			return *(c.pool.Get().(*[]byte))
		}
	}
	panic("mesh: buffer of more than the largest class")
}

// putBuf gives back a buffer getBuf returned (any slice of it).
func putBuf(b []byte) {
	b = b[:cap(b)]
	for _, c := range bufClasses {
		if len(b) == c.size {
			c.pool.Put(&b)
			return
		}
	}
}
