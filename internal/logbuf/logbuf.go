// Package logbuf batches log output: convoy writes one access-log line per
// request, and one write(2) per line was a tenth of the server's CPU per
// GetCallerIdentity (bench/RESULTS.md). Lines are gathered in memory and
// written at most Interval later, or at once when the buffer is full, so a
// busy server makes a few large writes instead of one per request. A line
// is never split or reordered. Close (at shutdown) writes what is left; a
// crash loses at most Interval of log lines, never a half line.
//
// Written by hand: bufio.Writer is not safe for concurrent use and has no
// timed flush, and the log libraries that batch bring their own formats.
package logbuf

import (
	"io"
	"sync"
	"time"
)

// Interval is how long a line may wait in memory.
const Interval = 20 * time.Millisecond

// size is the buffer that, once full, is written at once.
const size = 64 << 10

// Writer batches the writes of log lines to w.
type Writer struct {
	w     io.Writer
	mu    sync.Mutex
	buf   []byte
	timer *time.Timer
	err   error
}

// New returns a Writer to w.
func New(w io.Writer) *Writer {
	b := &Writer{w: w, buf: make([]byte, 0, size)}
	b.timer = time.AfterFunc(time.Hour, b.flushTimed)
	b.timer.Stop()
	return b
}

// Write buffers p, a whole log line (slog handlers write one line per
// call).
func (b *Writer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > cap(b.buf) {
		b.flushLocked()
		if len(p) > cap(b.buf) {
			_, err := b.w.Write(p)
			return len(p), err
		}
	}
	if len(b.buf) == 0 {
		b.timer.Reset(Interval)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *Writer) flushTimed() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
}

func (b *Writer) flushLocked() {
	if len(b.buf) == 0 {
		return
	}
	if _, err := b.w.Write(b.buf); err != nil && b.err == nil {
		b.err = err
	}
	b.buf = b.buf[:0]
}

// Flush writes what is buffered now.
func (b *Writer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushLocked()
	return b.err
}

// Close flushes and stops the timer; later writes go straight through.
func (b *Writer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.timer.Stop()
	b.flushLocked()
	b.buf = make([]byte, 0) // cap 0: every later line is written at once
	return b.err
}
