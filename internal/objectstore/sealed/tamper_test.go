package sealed

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"testing"
)

const tamperSeg = minSegmentSize

// tamperFixture is a file of three segments, the last partial.
func tamperFixture(t *testing.T) (plaintext, file []byte) {
	plaintext = randomBytes(42, 2*tamperSeg+100)
	return plaintext, sealBytes(t, plaintext, tamperSeg, 0)
}

// segmentBytes returns the stored bytes of segment i of a file with
// tamperSeg segments.
func segmentBytes(file []byte, i int) []byte {
	start := headerSize + i*(tamperSeg+segmentOverhead)
	return file[start:min(len(file), start+tamperSeg+segmentOverhead)]
}

// mustNotOpen checks that file, presented as size bytes, fails with ErrAuth:
// at NewReader, or on reading to the end, and that what is read before the
// failure is a prefix of plaintext. If the file's end was changed, reading
// at Size() must not say io.EOF either.
func mustNotOpen(t *testing.T, r io.ReaderAt, size int64, plaintext []byte, endChanged bool) {
	t.Helper()
	rd, err := NewReader(r, size, testKey, testBinding)
	if err != nil {
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("NewReader = %v, want ErrAuth", err)
		}
		return
	}
	got, err := io.ReadAll(rd.NewSectionReader(0, math.MaxInt64))
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("reading to the end = %d bytes, %v; want ErrAuth", len(got), err)
	}
	if !bytes.HasPrefix(plaintext, got) {
		t.Fatalf("returned %d bytes that are not the plaintext", len(got))
	}
	if _, err := rd.ReadAt(make([]byte, 1), rd.Size()); endChanged && !errors.Is(err, ErrAuth) {
		t.Fatalf("ReadAt at Size() = %v, want ErrAuth", err)
	}
	if n, err := rd.ReadAt(make([]byte, rd.Size()+1), 0); !errors.Is(err, ErrAuth) || !bytes.HasPrefix(plaintext, got[:n]) {
		t.Fatalf("ReadAt of everything = %d, %v; want ErrAuth", n, err)
	}
}

func TestBitFlipAnywhere(t *testing.T) {
	plaintext, file := tamperFixture(t)
	segments := len(plaintext)/tamperSeg + 1
	for pos := range file {
		for bit := range 8 {
			file[pos] ^= 1 << bit
			r, err := NewReader(bytes.NewReader(file), int64(len(file)), testKey, testBinding)
			if pos < headerSize {
				if !errors.Is(err, ErrAuth) {
					t.Fatalf("flip at header byte %d bit %d: NewReader = %v, want ErrAuth", pos, bit, err)
				}
				file[pos] ^= 1 << bit
				continue
			}
			if err != nil {
				t.Fatalf("flip at byte %d: NewReader = %v; the header is intact", pos, err)
			}
			hit := (pos - headerSize) / (tamperSeg + segmentOverhead)
			for i := range segments {
				want := plaintext[i*tamperSeg : min(len(plaintext), (i+1)*tamperSeg)]
				p := make([]byte, len(want))
				n, err := r.ReadAt(p, int64(i*tamperSeg))
				switch {
				case i == hit && (n != 0 || !errors.Is(err, ErrAuth)):
					t.Fatalf("flip at byte %d bit %d: segment %d read %d bytes, %v; want ErrAuth", pos, bit, i, n, err)
				case i != hit && (err != nil || !bytes.Equal(p, want)):
					t.Fatalf("flip at byte %d bit %d in segment %d: segment %d = %v; others must still read", pos, bit, hit, i, err)
				}
			}
			file[pos] ^= 1 << bit
		}
	}
}

func TestTruncateAnywhere(t *testing.T) {
	plaintext, file := tamperFixture(t)
	for size := range len(file) {
		// The file is cut and its length says so ...
		mustNotOpen(t, bytes.NewReader(file[:size]), int64(size), plaintext, true)
		// ... or it was cut after its length was taken.
		mustNotOpen(t, bytes.NewReader(file[:size]), int64(len(file)), plaintext, true)
	}
}

func TestExtend(t *testing.T) {
	plaintext, file := tamperFixture(t)
	last := segmentBytes(file, 2)
	for name, tail := range map[string][]byte{
		"1 byte":            {0},
		"27 bytes":          make([]byte, segmentOverhead-1),
		"28 bytes":          make([]byte, segmentOverhead),
		"29 bytes":          make([]byte, segmentOverhead+1),
		"a segment":         make([]byte, tamperSeg+segmentOverhead),
		"the last segment":  last,
		"the first segment": segmentBytes(file, 0),
	} {
		t.Run(name, func(t *testing.T) {
			f := append(slices.Clip(file), tail...)
			mustNotOpen(t, bytes.NewReader(f), int64(len(f)), plaintext, true)
		})
	}
}

func TestReorder(t *testing.T) {
	plaintext := randomBytes(43, 4*tamperSeg+100)
	file := sealBytes(t, plaintext, tamperSeg, 0)
	other := sealBytes(t, plaintext, tamperSeg, 0) // same key, binding and plaintext

	// rebuild makes a file of the header and the given segments of src.
	rebuild := func(header []byte, segs ...[]byte) []byte {
		out := slices.Clone(header[:headerSize])
		for _, s := range segs {
			out = append(out, s...)
		}
		return out
	}
	seg := func(f []byte, i int) []byte { return segmentBytes(f, i) }
	// Each case says whether it changes the last segment or where it is.
	type tamper struct {
		file       []byte
		endChanged bool
	}
	tests := map[string]tamper{
		"swap 0 and 1":                 {rebuild(file, seg(file, 1), seg(file, 0), seg(file, 2), seg(file, 3), seg(file, 4)), false},
		"swap 2 and 3":                 {rebuild(file, seg(file, 0), seg(file, 1), seg(file, 3), seg(file, 2), seg(file, 4)), false},
		"repeat 0":                     {rebuild(file, seg(file, 0), seg(file, 0), seg(file, 2), seg(file, 3), seg(file, 4)), false},
		"drop 1":                       {rebuild(file, seg(file, 0), seg(file, 2), seg(file, 3), seg(file, 4)), true},
		"drop the last":                {rebuild(file, seg(file, 0), seg(file, 1), seg(file, 2), seg(file, 3)), true},
		"segment 1 from another file":  {rebuild(file, seg(file, 0), seg(other, 1), seg(file, 2), seg(file, 3), seg(file, 4)), false},
		"header from another file":     {rebuild(other, seg(file, 0), seg(file, 1), seg(file, 2), seg(file, 3), seg(file, 4)), true},
		"last segment from other file": {rebuild(file, seg(file, 0), seg(file, 1), seg(file, 2), seg(file, 3), seg(other, 4)), true},
	}
	if !bytes.Equal(rebuild(file, seg(file, 0), seg(file, 1), seg(file, 2), seg(file, 3), seg(file, 4)), file) {
		t.Fatal("rebuild does not reassemble the file; the cases below would prove nothing")
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			mustNotOpen(t, bytes.NewReader(tt.file), int64(len(tt.file)), plaintext, tt.endChanged)
		})
	}
}

func TestWrongKeyOrBinding(t *testing.T) {
	file := sealBytes(t, randomBytes(44, 100), tamperSeg, 0)
	otherKey := slices.Clone(testKey)
	otherKey[31] ^= 1
	tests := []struct {
		name         string
		key, binding []byte
	}{
		{"other key", otherKey, testBinding},
		{"other binding", testKey, []byte("bucket/photos/dog.jpg@v1")},
		{"binding extended", testKey, append(slices.Clone(testBinding), '0')},
		{"binding cut", testKey, testBinding[:len(testBinding)-1]},
		{"empty binding", testKey, nil},
	}
	for _, tt := range tests {
		_, err := NewReader(bytes.NewReader(file), int64(len(file)), tt.key, tt.binding)
		if !errors.Is(err, ErrAuth) {
			t.Errorf("%s: NewReader = %v, want ErrAuth", tt.name, err)
		}
	}
}

// forgeHeader returns a header with the given fields and a valid MAC under
// the test key, as only the key's holder could make it.
func forgeHeader(t *testing.T, ver byte, segSize uint32) []byte {
	h := make([]byte, headerSize)
	copy(h, magic)
	h[versionOffset] = ver
	binary.BigEndian.PutUint32(h[segSizeOffset:], segSize)
	_, macKey, err := fileKeys(testKey, testBinding, h)
	if err != nil {
		t.Fatal(err)
	}
	copy(h[macOffset:], headerMAC(macKey, h))
	return h
}

// TestHeaderLimits checks that the reader refuses header fields no writer
// writes even when the MAC is valid, so a key holder's mistake (or a
// future version) cannot make it allocate by an unchecked size.
func TestHeaderLimits(t *testing.T) {
	good := forgeHeader(t, version, minSegmentSize)
	f := append(slices.Clone(good), make([]byte, segmentOverhead)...)
	if _, err := NewReader(bytes.NewReader(f), int64(len(f)), testKey, testBinding); err != nil {
		t.Fatalf("a forged header with valid fields does not open (%v); the cases below would prove nothing", err)
	}
	for _, tt := range []struct {
		ver     byte
		segSize uint32
	}{
		{version, 0},
		{version, 1},
		{version, minSegmentSize - 1},
		{version, minSegmentSize + 1},
		{version, 3 << 12},
		{version, maxSegmentSize << 1},
		{version, 1 << 31},
		{version, math.MaxUint32},
		{0, minSegmentSize},
		{version + 1, minSegmentSize},
	} {
		h := forgeHeader(t, tt.ver, tt.segSize)
		f := append(h, make([]byte, 1<<16)...)
		_, err := NewReader(bytes.NewReader(f), math.MaxInt64, testKey, testBinding)
		if !errors.Is(err, ErrAuth) {
			t.Errorf("version %d, segment size %d: NewReader = %v, want ErrAuth", tt.ver, tt.segSize, err)
		}
	}
	bad := slices.Clone(good)
	copy(bad, "CVS2")
	if _, err := NewReader(bytes.NewReader(bad), int64(len(bad)), testKey, testBinding); !errors.Is(err, ErrAuth) {
		t.Errorf("bad magic: NewReader = %v, want ErrAuth", err)
	}
}

// errReaderAt fails every read.
type errReaderAt struct{}

var errIO = errors.New("i/o error")

func (errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, errIO }

// TestIOErrorIsNotAuth checks that a failing disk is reported as itself,
// not as tampering.
func TestIOErrorIsNotAuth(t *testing.T) {
	_, err := NewReader(errReaderAt{}, 1000, testKey, testBinding)
	if !errors.Is(err, errIO) || errors.Is(err, ErrAuth) {
		t.Fatalf("NewReader on a failing disk = %v", err)
	}
	_, file := tamperFixture(t)
	r := openBytes(t, file)
	r.r = failAfterHeader{bytes.NewReader(file)}
	if _, err := r.ReadAt(make([]byte, 10), 0); !errors.Is(err, errIO) || errors.Is(err, ErrAuth) {
		t.Fatalf("ReadAt on a failing disk = %v", err)
	}
}

type failAfterHeader struct{ r io.ReaderAt }

func (f failAfterHeader) ReadAt(p []byte, off int64) (int, error) {
	if off >= headerSize {
		return 0, fmt.Errorf("read at %d: %w", off, errIO)
	}
	return f.r.ReadAt(p, off)
}
