package sealed

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// The smallest file with two segments is 8 KiB, and Go's minimizer spends
// up to a minute on each new input of that size; run the fuzzers with a
// shorter minimizing budget, for example
//
//	go test -fuzz FuzzReader -fuzztime 1m -fuzzminimizetime 2s

// FuzzReader opens arbitrary bytes as a sealed file. It must not panic,
// must size nothing by an unchecked header field, must fail only with
// ErrAuth (a bytes.Reader has no I/O errors), and must never read to the
// end of a file it was not given: no forgery.
func FuzzReader(f *testing.F) {
	// Valid files under the test key and binding, so that mutations of
	// their segments get past the header MAC. They are read from testdata
	// because each fuzz worker must see the same bytes.
	files := make([][]byte, len(goldens))
	for i, g := range goldens {
		files[i] = readGolden(f, g)
		f.Add(files[i])
	}
	f.Add([]byte("CVS1"))
	f.Add(append([]byte("CVS1\x01\xff\xff\xff\xff"), make([]byte, headerSize)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), int64(len(data)), testKey, testBinding)
		if err != nil {
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("NewReader = %v, want ErrAuth", err)
			}
			return
		}
		if r.segSize < minSegmentSize || r.segSize > maxSegmentSize {
			t.Fatalf("opened with segment size %d", r.segSize)
		}
		if r.Size() < 0 || r.Size() > int64(len(data)) {
			t.Fatalf("Size() = %d for a %d-byte file", r.Size(), len(data))
		}
		// Read a piece, then everything.
		if _, err := r.ReadAt(make([]byte, 100), r.Size()/2); err != nil && err != io.EOF && !errors.Is(err, ErrAuth) {
			t.Fatalf("ReadAt = %v", err)
		}
		p := make([]byte, r.Size()+1)
		n, err := r.ReadAt(p, 0)
		if cap(r.ct) > maxSegmentSize+segmentOverhead || cap(r.cache) > maxSegmentSize {
			t.Fatalf("buffers of %d and %d bytes", cap(r.ct), cap(r.cache))
		}
		if err != io.EOF {
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			return
		}
		for i, file := range files {
			if bytes.Equal(data, file) {
				if !bytes.Equal(p[:n], goldens[i].plaintext) {
					t.Fatalf("%s read to the end with the wrong plaintext", goldens[i].name)
				}
				return
			}
		}
		t.Fatalf("a %d-byte file that was never sealed read to the end", len(data))
	})
}

// FuzzRoundTrip seals plaintexts of arbitrary length in arbitrary Writes
// and segment sizes and reads a section back. The plaintext's bytes do not
// steer the code, its length does, so the input is the length: small
// inputs keep the fuzzer's minimizing quick.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint32(12), uint8(0), uint16(3), uint32(2), uint32(5))
	f.Add(uint32(3*minSegmentSize+17), uint8(0), uint16(4096), uint32(4095), uint32(8194))
	f.Add(uint32(2*minSegmentSize), uint8(0), uint16(1), uint32(0), uint32(1<<20))
	f.Add(uint32(20000), uint8(1), uint16(0), uint32(0), uint32(20000))
	f.Fuzz(func(t *testing.T, size uint32, segShift uint8, chunk uint16, off, n uint32) {
		plaintext := randomBytes(uint64(size), int(size%(4<<20)))
		segSize := minSegmentSize << (segShift % 9)
		// At most 64Ki Writes: a million tiny ones per input would starve
		// the fuzzer and test nothing more.
		c := max(int(chunk), len(plaintext)>>16)
		file := sealBytes(t, plaintext, segSize, c)
		if int64(len(file)) != CiphertextSize(int64(len(plaintext)), segSize) {
			t.Fatalf("file is %d bytes, CiphertextSize says %d", len(file), CiphertextSize(int64(len(plaintext)), segSize))
		}
		r := openBytes(t, file)
		if r.Size() != int64(len(plaintext)) {
			t.Fatalf("Size() = %d, want %d", r.Size(), len(plaintext))
		}
		o := int64(off) % (r.Size() + 1)
		got, err := io.ReadAll(r.NewSectionReader(o, int64(n)))
		if err != nil {
			t.Fatal(err)
		}
		if want := plaintext[o:min(o+int64(n), r.Size())]; !bytes.Equal(got, want) {
			t.Fatalf("section [%d, +%d) read %d bytes, want %d", o, n, len(got), len(want))
		}
	})
}
