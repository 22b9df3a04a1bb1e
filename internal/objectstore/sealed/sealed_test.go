package sealed

import (
	"bytes"
	"crypto/fips140"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

var (
	testKey     = bytes.Repeat([]byte{0x5a}, keySize)
	testBinding = []byte("bucket/photos/cat.jpg@v1")
)

func TestMain(m *testing.M) {
	fmt.Fprintf(os.Stderr, "sealed: fips140 enabled=%v enforced=%v\n", fips140.Enabled(), fips140.Enforced())
	os.Exit(m.Run())
}

// randomBytes returns n bytes from a PRNG seeded with seed.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}).Read(b)
	return b
}

// sealBytes seals plaintext, handing it to the writer chunk bytes at a time
// (0: in one Write).
func sealBytes(t testing.TB, plaintext []byte, segSize, chunk int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testKey, testBinding, segSize)
	if err != nil {
		t.Fatal(err)
	}
	if chunk == 0 {
		chunk = max(1, len(plaintext))
	}
	for p := plaintext; len(p) > 0; {
		c := min(chunk, len(p))
		n, err := w.Write(p[:c])
		if err != nil || n != c {
			t.Fatalf("Write(%d bytes) = %d, %v", c, n, err)
		}
		p = p[c:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func openBytes(t testing.TB, file []byte) *Reader {
	t.Helper()
	r, err := NewReader(bytes.NewReader(file), int64(len(file)), testKey, testBinding)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkReadAt compares ReadAt(len n, off) with what io.ReaderAt promises
// for plaintext.
func checkReadAt(t *testing.T, r *Reader, plaintext []byte, off, n int64) {
	t.Helper()
	p := make([]byte, n)
	got, err := r.ReadAt(p, off)
	size := int64(len(plaintext))
	want := max(0, min(n, size-off))
	if int64(got) != want {
		t.Fatalf("ReadAt(%d bytes at %d) read %d bytes, want %d (err %v)", n, off, got, want, err)
	}
	// As bytes.Reader: io.EOF for any read at or past the end, even an empty one.
	if wantEOF := want < n || off >= size; wantEOF != (err == io.EOF) || (!wantEOF && err != nil) {
		t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want EOF %v", n, off, got, err, wantEOF)
	}
	if want > 0 && !bytes.Equal(p[:got], plaintext[off:off+want]) {
		t.Fatalf("ReadAt(%d bytes at %d) returned the wrong bytes", n, off)
	}
}

// checkBoundaries reads around every segment boundary.
func checkBoundaries(t *testing.T, r *Reader, plaintext []byte, segSize int) {
	t.Helper()
	s := int64(segSize)
	size := int64(len(plaintext))
	for b := int64(0); b <= size+s; b += s {
		for _, off := range []int64{b - 1, b, b + 1} {
			if off < 0 {
				continue
			}
			for _, n := range []int64{0, 1, 2, s - 1, s, s + 1, 2*s + 1} {
				checkReadAt(t, r, plaintext, off, n)
			}
		}
	}
	checkReadAt(t, r, plaintext, 0, size)
	checkReadAt(t, r, plaintext, 0, size+1)
	checkReadAt(t, r, plaintext, size, 1)
}

func TestRoundTrip(t *testing.T) {
	for _, segSize := range []int{4 << 10, 16 << 10, DefaultSegmentSize, 1 << 20} {
		s := segSize
		for _, size := range []int{0, 1, s - 1, s, s + 1, 2 * s, 3*s + 17} {
			t.Run(fmt.Sprintf("seg=%d/size=%d", s, size), func(t *testing.T) {
				plaintext := randomBytes(uint64(size), size)
				// How the plaintext is cut into Writes must not matter.
				var file []byte
				for _, chunk := range []int{0, 1, 1000, 32 << 10, s, s + 1} {
					if chunk == 1 && size > 64<<10 {
						continue // byte-at-a-time writes of a large object add nothing
					}
					f := sealBytes(t, plaintext, s, chunk)
					if want := CiphertextSize(int64(size), s); int64(len(f)) != want {
						t.Fatalf("chunk %d: file is %d bytes, CiphertextSize says %d", chunk, len(f), want)
					}
					r := openBytes(t, f)
					if r.Size() != int64(size) {
						t.Fatalf("chunk %d: Size() = %d, want %d", chunk, r.Size(), size)
					}
					checkReadAt(t, r, plaintext, 0, int64(size)+1)
					file = f
				}
				checkBoundaries(t, openBytes(t, file), plaintext, s)
			})
		}
	}
}

func TestDefaultSegmentSize(t *testing.T) {
	plaintext := randomBytes(1, DefaultSegmentSize+1)
	file := sealBytes(t, plaintext, 0, 0)
	if got, want := int64(len(file)), CiphertextSize(int64(len(plaintext)), DefaultSegmentSize); got != want {
		t.Fatalf("segment size 0 wrote %d bytes, want %d as with DefaultSegmentSize", got, want)
	}
	if CiphertextSize(10, 0) != CiphertextSize(10, DefaultSegmentSize) {
		t.Fatal("CiphertextSize(n, 0) differs from CiphertextSize(n, DefaultSegmentSize)")
	}
	checkBoundaries(t, openBytes(t, file), plaintext, DefaultSegmentSize)
}

// TestRoundTripRandom is the property: for random sizes up to 5 MiB, segment
// sizes and write chunkings, every random range reads back as written.
func TestRoundTripRandom(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	rounds := 24
	if testing.Short() {
		rounds = 4
	}
	for round := range rounds {
		size := rng.IntN(5<<20 + 1)
		segSize := minSegmentSize << rng.IntN(9)
		chunk := rng.IntN(3 * segSize)
		plaintext := randomBytes(rng.Uint64(), size)
		file := sealBytes(t, plaintext, segSize, chunk)
		if int64(len(file)) != CiphertextSize(int64(size), segSize) {
			t.Fatalf("round %d: file size %d, CiphertextSize %d", round, len(file), CiphertextSize(int64(size), segSize))
		}
		r := openBytes(t, file)
		for range 64 {
			off := rng.Int64N(int64(size) + 2)
			n := rng.Int64N(int64(3*segSize) + 1)
			checkReadAt(t, r, plaintext, off, n)
		}
		// Sequential reads in random pieces through a section reader.
		off := rng.Int64N(int64(size) + 1)
		n := rng.Int64N(int64(size) - off + 2)
		got, err := readInPieces(r.NewSectionReader(off, n), rng)
		if err != nil {
			t.Fatalf("round %d: section read: %v", round, err)
		}
		if want := plaintext[off:min(off+n, int64(size))]; !bytes.Equal(got, want) {
			t.Fatalf("round %d: section [%d, +%d) read %d bytes, want %d", round, off, n, len(got), len(want))
		}
	}
}

// readInPieces reads r to the end with reads of random sizes.
func readInPieces(r io.Reader, rng *rand.Rand) ([]byte, error) {
	var out []byte
	buf := make([]byte, 3<<20)
	for {
		n, err := r.Read(buf[:1+rng.IntN(len(buf))])
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func TestCiphertextSize(t *testing.T) {
	const h, o = headerSize, segmentOverhead
	s := int64(minSegmentSize)
	tests := []struct {
		n       int64
		segSize int
		want    int64
	}{
		{0, minSegmentSize, h + o},
		{1, minSegmentSize, h + 1 + o},
		{s, minSegmentSize, h + s + o},
		{s + 1, minSegmentSize, h + s + 1 + 2*o},
		{2 * s, minSegmentSize, h + 2*s + 2*o},
		{maxSegments * s, minSegmentSize, h + maxSegments*(s+o)},
		{maxSegments*s + 1, minSegmentSize, -1},
		{-1, minSegmentSize, -1},
		{1, 0, h + 1 + o},
		{1, 3 << 12, -1},
		{1, 2 << 10, -1},
		{1, 2 << 20, -1},
		{1, -4096, -1},
	}
	for _, tt := range tests {
		if got := CiphertextSize(tt.n, tt.segSize); got != tt.want {
			t.Errorf("CiphertextSize(%d, %d) = %d, want %d", tt.n, tt.segSize, got, tt.want)
		}
	}
}

// TestLayoutInvertsCiphertextSize checks that every file length is either
// the CiphertextSize of exactly one plaintext length, which layout
// recovers, or rejected by layout.
func TestLayoutInvertsCiphertextSize(t *testing.T) {
	const segSize = minSegmentSize
	plainOf := map[int64]int64{}
	for n := int64(0); n <= 6*segSize; n++ {
		c := CiphertextSize(n, segSize)
		if prev, dup := plainOf[c]; dup {
			t.Fatalf("plaintexts of %d and %d bytes both seal to %d bytes", prev, n, c)
		}
		plainOf[c] = n
	}
	for size := int64(0); size <= CiphertextSize(6*segSize, segSize); size++ {
		segments, lastLen, ok := layout(size, segSize)
		n, valid := plainOf[size]
		if ok != valid {
			t.Fatalf("layout(%d) ok = %v, want %v", size, ok, valid)
		}
		if ok && (segments-1)*segSize+lastLen != n {
			t.Fatalf("layout(%d) = %d segments, last %d; want plaintext %d", size, segments, lastLen, n)
		}
	}
}

func TestLayoutSegmentLimit(t *testing.T) {
	const s = minSegmentSize
	largest := CiphertextSize(maxSegments*s, s)
	if segments, _, ok := layout(largest, s); !ok || segments != maxSegments {
		t.Fatalf("layout of the largest file = %d segments, %v", segments, ok)
	}
	for _, size := range []int64{largest + 1 + segmentOverhead, largest + s + segmentOverhead} {
		if _, _, ok := layout(size, s); ok {
			t.Errorf("layout accepted %d bytes, past 2^32 segments", size)
		}
	}
}

func TestEmptyObject(t *testing.T) {
	file := sealBytes(t, nil, minSegmentSize, 0)
	if len(file) != headerSize+segmentOverhead {
		t.Fatalf("empty object sealed to %d bytes, want %d", len(file), headerSize+segmentOverhead)
	}
	r := openBytes(t, file)
	if r.Size() != 0 {
		t.Fatalf("Size() = %d", r.Size())
	}
	if n, err := r.ReadAt(make([]byte, 1), 0); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt = %d, %v; want 0, EOF", n, err)
	}
	// The one segment is authenticated even though it is empty.
	file[len(file)-1] ^= 1
	r = openBytes(t, file)
	if _, err := r.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrAuth) {
		t.Fatalf("ReadAt of a tampered empty object = %v, want ErrAuth", err)
	}
}

// countingReaderAt counts the ciphertext reads of each segment.
type countingReaderAt struct {
	r       io.ReaderAt
	segSize int64
	mu      sync.Mutex
	reads   map[int64]int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= headerSize {
		c.mu.Lock()
		c.reads[(off-headerSize)/(c.segSize+segmentOverhead)]++
		c.mu.Unlock()
	}
	return c.r.ReadAt(p, off)
}

// TestSectionDecryptsEachSegmentOnce reads sections sequentially in pieces
// of many sizes and checks that no segment is read and decrypted twice.
func TestSectionDecryptsEachSegmentOnce(t *testing.T) {
	const segSize = minSegmentSize
	plaintext := randomBytes(7, 5*segSize+123)
	file := sealBytes(t, plaintext, segSize, 0)
	for _, piece := range []int{1, 100, 1000, segSize - 1, segSize, segSize + 1, 3 * segSize, 10 * segSize} {
		for _, off := range []int64{0, 1, segSize - 1, segSize, 2*segSize + 5} {
			t.Run(fmt.Sprintf("piece=%d/off=%d", piece, off), func(t *testing.T) {
				c := &countingReaderAt{r: bytes.NewReader(file), segSize: segSize, reads: map[int64]int{}}
				r, err := NewReader(c, int64(len(file)), testKey, testBinding)
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(bufioLess{r.NewSectionReader(off, r.Size()-off), piece})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, plaintext[off:]) {
					t.Fatal("section read returned the wrong bytes")
				}
				for i := off / segSize; i*segSize < int64(len(plaintext)); i++ {
					if c.reads[i] != 1 {
						t.Errorf("segment %d read %d times, want once", i, c.reads[i])
					}
				}
			})
		}
	}
}

// bufioLess reads from r in pieces of at most n bytes.
type bufioLess struct {
	r io.Reader
	n int
}

func (b bufioLess) Read(p []byte) (int, error) { return b.r.Read(p[:min(len(p), b.n)]) }

func TestSectionReaderConformance(t *testing.T) {
	const segSize = minSegmentSize
	plaintext := randomBytes(8, 3*segSize+17)
	r := openBytes(t, sealBytes(t, plaintext, segSize, 0))
	for _, sec := range [][2]int64{{0, int64(len(plaintext))}, {segSize - 3, 2*segSize + 9}, {5, 0}} {
		want := plaintext[sec[0] : sec[0]+sec[1]]
		if err := iotest.TestReader(r.NewSectionReader(sec[0], sec[1]), want); err != nil {
			t.Errorf("section %v: %v", sec, err)
		}
	}
}

func TestReadAtErrors(t *testing.T) {
	r := openBytes(t, sealBytes(t, randomBytes(9, 100), minSegmentSize, 0))
	if _, err := r.ReadAt(make([]byte, 1), -1); err == nil || errors.Is(err, ErrAuth) {
		t.Fatalf("ReadAt at -1 = %v, want a usage error", err)
	}
	if n, err := r.ReadAt(nil, 50); n != 0 || err != nil {
		t.Fatalf("empty ReadAt inside the object = %d, %v", n, err)
	}
	if n, err := r.ReadAt(nil, 1000); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt past the end = %d, %v; want 0, EOF", n, err)
	}
}

func TestConcurrentReadAt(t *testing.T) {
	const segSize = minSegmentSize
	plaintext := randomBytes(10, 20*segSize+5)
	r := openBytes(t, sealBytes(t, plaintext, segSize, 0))
	var wg sync.WaitGroup
	var failed atomic.Bool
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				off := rng.Int64N(int64(len(plaintext)))
				p := make([]byte, rng.IntN(3*segSize))
				n, err := r.ReadAt(p, off)
				if (err != nil && err != io.EOF) || !bytes.Equal(p[:n], plaintext[off:off+int64(n)]) {
					failed.Store(true)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		t.Fatal("a concurrent ReadAt returned an error or the wrong bytes")
	}
}

func TestNewWriterErrors(t *testing.T) {
	for _, segSize := range []int{-1, 1, 2048, 4095, 4097, 12 << 10, 2 << 20, 1 << 31} {
		if _, err := NewWriter(io.Discard, testKey, testBinding, segSize); err == nil {
			t.Errorf("NewWriter accepted segment size %d", segSize)
		}
	}
	for _, key := range [][]byte{nil, make([]byte, 16), make([]byte, 31), make([]byte, 33)} {
		if _, err := NewWriter(io.Discard, key, testBinding, 0); err == nil {
			t.Errorf("NewWriter accepted a %d-byte key", len(key))
		}
		if _, err := NewReader(bytes.NewReader(nil), 0, key, testBinding); err == nil || errors.Is(err, ErrAuth) {
			t.Errorf("NewReader with a %d-byte key = %v, want a usage error", len(key), err)
		}
	}
}

func TestWriterAfterClose(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testKey, testBinding, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeded")
	}
	if buf.Len() != headerSize+segmentOverhead {
		t.Fatalf("second Close or late Write changed the output: %d bytes", buf.Len())
	}
}

// flakyWriter fails its failAt'th write (counting from 0) and accepts the
// others, counting the bytes it accepts after the failure.
type flakyWriter struct {
	failAt, writes int
	after          int
}

var errDisk = errors.New("disk full")

func (f *flakyWriter) Write(p []byte) (int, error) {
	f.writes++
	switch {
	case f.writes-1 == f.failAt:
		return 0, errDisk
	case f.writes-1 > f.failAt:
		f.after += len(p)
	}
	return len(p), nil
}

// TestWriterErrorIsSticky checks that after a failed write the writer
// writes nothing more, even if the disk recovers: a later segment would
// follow a hole.
func TestWriterErrorIsSticky(t *testing.T) {
	f := &flakyWriter{failAt: 2} // the header and segment 0 succeed
	w, err := NewWriter(f, testKey, testBinding, minSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 3*minSegmentSize)
	if n, err := w.Write(p); !errors.Is(err, errDisk) || n != minSegmentSize {
		t.Fatalf("Write = %d, %v; want %d, %v", n, err, minSegmentSize, errDisk)
	}
	if _, err := w.Write(p); !errors.Is(err, errDisk) {
		t.Fatalf("Write after a failure = %v", err)
	}
	if err := w.Close(); !errors.Is(err, errDisk) {
		t.Fatalf("Close after a failure = %v", err)
	}
	if f.after != 0 {
		t.Fatalf("%d bytes written after the failure", f.after)
	}
	if _, err := NewWriter(&flakyWriter{}, testKey, testBinding, 0); !errors.Is(err, errDisk) {
		t.Fatalf("NewWriter with a failing header write = %v", err)
	}
}

func TestWriterSegmentLimit(t *testing.T) {
	sw := mustWriter(t)
	sw.next = maxSegments - 2
	// Segment 2^32-2 may be sealed as not final; 2^32-1 must be the last.
	if _, err := sw.Write(make([]byte, 2*minSegmentSize+1)); err == nil {
		t.Fatal("Write past 2^32 segments succeeded")
	}
	if sw.next != maxSegments-1 {
		t.Fatalf("sealed up to segment %d, want %d", sw.next, int64(maxSegments-1))
	}
	sw = mustWriter(t)
	sw.next = maxSegments - 2
	if _, err := sw.Write(make([]byte, 2*minSegmentSize)); err != nil {
		t.Fatalf("Write of exactly 2^32 segments: %v", err)
	}
	if err := sw.Close(); err != nil {
		t.Fatalf("Close at 2^32 segments: %v", err)
	}
}

func mustWriter(t *testing.T) *writer {
	t.Helper()
	w, err := NewWriter(io.Discard, testKey, testBinding, minSegmentSize)
	if err != nil {
		t.Fatal(err)
	}
	return w.(*writer)
}

func TestSaltAndNoncesAreFresh(t *testing.T) {
	plaintext := randomBytes(11, 2*minSegmentSize)
	a := sealBytes(t, plaintext, minSegmentSize, 0)
	b := sealBytes(t, plaintext, minSegmentSize, 0)
	if bytes.Equal(a[saltOffset:macOffset], b[saltOffset:macOffset]) {
		t.Fatal("two files have the same salt")
	}
	for i := range 2 {
		at := headerSize + i*(minSegmentSize+segmentOverhead)
		if bytes.Equal(a[at:at+nonceSize], b[at:at+nonceSize]) {
			t.Fatalf("segment %d has the same nonce in two files", i)
		}
	}
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden is a file written by the first version of this package.
type golden struct {
	name      string
	segSize   int
	plaintext []byte
}

var goldens = []golden{
	{"v1-empty.cvs", minSegmentSize, nil},
	{"v1-three-segments.cvs", minSegmentSize, randomBytes(2024, 2*minSegmentSize+333)},
	{"v1-16k-segments.cvs", 16 << 10, randomBytes(2025, 100)},
}

// readGolden returns the stored file of g.
func readGolden(t testing.TB, g golden) []byte {
	t.Helper()
	path := filepath.Join("testdata", g.name)
	if *update {
		if err := os.WriteFile(path, sealBytes(t, g.plaintext, g.segSize, 0), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return file
}

// TestGoldenV1 opens files written by the first version of this package,
// so a change that cannot read what is already on disk fails here.
func TestGoldenV1(t *testing.T) {
	for _, g := range goldens {
		r := openBytes(t, readGolden(t, g))
		got := make([]byte, r.Size()+1)
		n, err := r.ReadAt(got, 0)
		if err != io.EOF || !bytes.Equal(got[:n], g.plaintext) {
			t.Errorf("%s: read %d bytes, %v; want the plaintext and EOF", g.name, n, err)
		}
	}
}
