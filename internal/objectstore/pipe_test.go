package objectstore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"testing"
	"testing/iotest"
)

func TestPipeCopy(t *testing.T) {
	for _, size := range []int{0, 1, copyBufSize - 1, copyBufSize, copyBufSize + 1, pipelineMin, 5*copyBufSize + 17} {
		data := make([]byte, size)
		rand.Read(data)
		for _, announced := range []int64{int64(size), -1} {
			var out bytes.Buffer
			// OneByteReader and HalfReader make short reads, as TLS does.
			for _, src := range []io.Reader{bytes.NewReader(data), iotest.HalfReader(bytes.NewReader(data))} {
				out.Reset()
				n, err := pipeCopy(&out, src, announced)
				if err != nil || n != int64(size) || !bytes.Equal(out.Bytes(), data) {
					t.Fatalf("size %d announced %d: n %d err %v equal %v", size, announced, n, err, bytes.Equal(out.Bytes(), data))
				}
			}
		}
	}
}

func TestPipeCopyReadError(t *testing.T) {
	boom := errors.New("connection reset")
	src := io.MultiReader(bytes.NewReader(make([]byte, 3*copyBufSize)), iotest.ErrReader(boom))
	n, err := pipeCopy(io.Discard, src, -1)
	if !errors.Is(err, boom) || n != 3*copyBufSize {
		t.Fatalf("n %d err %v", n, err)
	}
}

// failingWriter accepts limit bytes, then fails.
type failingWriter struct{ limit, got int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.got+len(p) > w.limit {
		return 0, errors.New("disk full")
	}
	w.got += len(p)
	return len(p), nil
}

// countingReader counts what was read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func TestPipeCopyWriteErrorStopsReading(t *testing.T) {
	src := &countingReader{r: io.LimitReader(zeros{}, 1<<30)}
	n, err := pipeCopy(&failingWriter{limit: 2 * copyBufSize}, src, -1)
	if err == nil || err.Error() != "disk full" || n != 2*copyBufSize {
		t.Fatalf("n %d err %v", n, err)
	}
	if src.n > 16*copyBufSize {
		t.Fatalf("kept reading %d bytes after the writer failed", src.n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// directFile writes exactly what it was given, in pieces of any size, with
// a tail that is not a multiple of the block size.
func TestDirectFile(t *testing.T) {
	for _, size := range []int{0, 100, directBufSize, 3*directBufSize + 12345} {
		f, err := os.CreateTemp(t.TempDir(), "direct")
		if err != nil {
			t.Fatal(err)
		}
		d, err := newDirect(f)
		if err != nil {
			t.Skipf("no O_DIRECT on this file system: %v", err)
		}
		data := make([]byte, size)
		rand.Read(data)
		for rest := data; len(rest) > 0; {
			n := min(len(rest), 70001) // sealed segments are not block-sized
			if _, err := d.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := d.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Write([]byte("x")); err == nil {
			t.Fatal("write after Flush accepted")
		}
		f.Close()
		got, err := os.ReadFile(f.Name())
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back %d bytes, equal %v, err %v", size, len(got), bytes.Equal(got, data), err)
		}
	}
}
