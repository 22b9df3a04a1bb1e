package objectstore

import (
	"errors"
	"io"
	"sync"
)

// copyBufSize is the unit bodies move in: large enough that a 1 GiB
// object is 4 096 hand-offs, small enough that a few in flight cost little.
const copyBufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// pipelineMin is the smallest body worth a second goroutine.
const pipelineMin = 2 * copyBufSize

// pipeCopy copies src to dst like io.Copy, on two goroutines when size
// (the expected length, -1 if unknown) is large: this goroutine reads src
// (for a PUT: TLS records and the hashes, in src) while a second writes dst
// (for a PUT: sealing and the file; for a GET: the TLS writes), so that on
// a machine with two cores the two halves overlap. Small bodies are copied
// on this goroutine, with a pooled buffer.
//
// It returns the bytes written to dst. A read error other than io.EOF, or
// a write error, ends the copy; dst has then received a prefix of src.
func pipeCopy(dst io.Writer, src io.Reader, size int64) (int64, error) {
	if size >= 0 && size < pipelineMin {
		b := getBuf()
		defer putBuf(b)
		return io.CopyBuffer(dst, src, *b)
	}
	const inFlight = 3
	type chunk struct {
		b *[]byte
		n int
	}
	work := make(chan chunk, inFlight)
	free := make(chan *[]byte, inFlight)
	for range inFlight {
		free <- getBuf()
	}
	var written int64
	writeErr := make(chan error, 1)
	failed := make(chan struct{}) // closed at the first write error
	go func() {
		var err error
		for c := range work {
			if err == nil {
				var n int
				n, err = dst.Write((*c.b)[:c.n])
				written += int64(n)
				if err != nil {
					close(failed)
				}
			}
			free <- c.b
		}
		writeErr <- err
	}()

	var readErr error
read:
	for {
		var b *[]byte
		select {
		case b = <-free:
		case <-failed:
			break read // no point reading what cannot be written
		}
		n, err := io.ReadFull(src, *b)
		if n > 0 {
			work <- chunk{b, n}
		} else {
			free <- b
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				readErr = err
			}
			break
		}
	}
	close(work)
	werr := <-writeErr
	for range inFlight {
		putBuf(<-free)
	}
	if readErr != nil {
		return written, readErr
	}
	return written, werr
}
