package mesh

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"testing"
)

func testKey(t testing.TB) []byte {
	k := make([]byte, keyLen)
	rand.Read(k)
	return k
}

type rec struct {
	typ     recordType
	payload []byte
}

// sealAll seals records into one stream, each record kept apart too.
func sealAll(t testing.TB, key []byte, recs []rec) (stream []byte, each [][]byte) {
	t.Helper()
	s, err := newSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		b, err := s.seal(nil, r.typ, r.payload)
		if err != nil {
			t.Fatal(err)
		}
		each = append(each, b)
		stream = append(stream, b...)
	}
	return stream, each
}

// openAll reads every record of stream through a reader that returns at
// most chunk bytes per Read.
func openAll(key, stream []byte, chunk int) ([]rec, error) {
	o, err := newOpener(&chunkReader{r: bytes.NewReader(stream), n: chunk}, key)
	if err != nil {
		return nil, err
	}
	var out []rec
	for {
		typ, p, err := o.next()
		if err != nil {
			return out, err
		}
		out = append(out, rec{typ, bytes.Clone(p)})
	}
}

type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

func TestRecordRoundTrip(t *testing.T) {
	key := testKey(t)
	big := make([]byte, maxPayload)
	rand.Read(big)
	recs := []rec{
		{recOpen, []byte{0x1e, 0x61}},
		{recData, []byte("hello")},
		{recData, big},
		{recData, big[:1]},
		{recData, nil},
		{recPorts, encodePorts([]uint16{22, 7777, 29500})},
		{recFin, nil},
	}
	stream, _ := sealAll(t, key, recs)
	for _, chunk := range []int{1, 3, 4, 17, 4096, 1 << 20} {
		got, err := openAll(key, stream, chunk)
		if !errors.Is(err, errTruncated) {
			t.Fatalf("chunk %d: end of stream: %v, want errTruncated", chunk, err)
		}
		if len(got) != len(recs) {
			t.Fatalf("chunk %d: %d records, want %d", chunk, len(got), len(recs))
		}
		for i := range recs {
			if got[i].typ != recs[i].typ || !bytes.Equal(got[i].payload, recs[i].payload) {
				t.Fatalf("chunk %d: record %d differs", chunk, i)
			}
		}
	}
	if len(stream) != len(recs)*(headerLen+sealOverhead)+2+5+maxPayload+1+6 {
		t.Fatalf("stream of %d bytes: overhead is not %d bytes per record", len(stream), headerLen+sealOverhead)
	}
}

func TestRecordOversizedRefused(t *testing.T) {
	s, _ := newSealer(testKey(t))
	if _, err := s.seal(nil, recData, make([]byte, maxPayload+1)); err == nil {
		t.Fatal("sealed a payload larger than maxPayload")
	}
}

// Every change to a stream that an attacker on the wire could make is
// detected: the reader gets an error, never different data.
func TestRecordTamper(t *testing.T) {
	key := testKey(t)
	recs := []rec{{recData, []byte("first record")}, {recData, []byte("second record")}, {recFin, nil}}
	stream, each := sealAll(t, key, recs)
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	other, _ := sealAll(t, testKey(t), recs)

	cases := map[string][]byte{
		"reordered":          join(each[1], each[0], each[2]),
		"replayed":           join(each[0], each[0], each[1], each[2]),
		"dropped":            join(each[0], each[2]),
		"other key":          other,
		"spliced from other": join(each[0], other[len(each[0]):]),
	}
	for i := range stream {
		for _, bit := range []byte{0x01, 0x80} {
			b := bytes.Clone(stream)
			b[i] ^= bit
			cases[fmt.Sprintf("bit %#x of byte %d flipped", bit, i)] = b
		}
	}
	for name, b := range cases {
		got, err := openAll(key, b, 7)
		// The stream ends without the sender's fin, and everything
		// delivered before the error is what was sent, in order.
		if err == nil || len(got) == len(recs) || !prefixOf(got, recs) {
			t.Errorf("%s: %d records delivered, then %v", name, len(got), err)
		}
	}
}

func prefixOf(got, want []rec) bool {
	if len(got) > len(want) {
		return false
	}
	for i := range got {
		if got[i].typ != want[i].typ || !bytes.Equal(got[i].payload, want[i].payload) {
			return false
		}
	}
	return true
}

// A stream cut anywhere is reported as truncated, after the records that
// arrived whole.
func TestRecordTruncation(t *testing.T) {
	key := testKey(t)
	recs := []rec{{recData, []byte("one")}, {recData, []byte("two")}, {recFin, nil}}
	stream, each := sealAll(t, key, recs)
	for cut := 0; cut < len(stream); cut++ {
		got, err := openAll(key, stream[:cut], 5)
		if !errors.Is(err, errTruncated) {
			t.Fatalf("cut at %d: %v, want errTruncated", cut, err)
		}
		whole := 0
		for n := 0; whole < len(each) && n+len(each[whole]) <= cut; whole++ {
			n += len(each[whole])
		}
		if len(got) != whole || !prefixOf(got, recs) {
			t.Fatalf("cut at %d: %d records delivered, want %d", cut, len(got), whole)
		}
	}
}

func TestRecordHeaderLimits(t *testing.T) {
	hdr := func(typ recordType, n int) []byte {
		b := make([]byte, headerLen)
		putHeader(b, typ, n)
		return b
	}
	for _, tc := range []struct {
		hdr []byte
		ok  bool
	}{
		{hdr(recData, sealOverhead+maxPayload), true},
		{hdr(recData, sealOverhead+maxPayload+1), false},
		{[]byte{byte(recData), 0, 0, sealOverhead}, true},
		{[]byte{byte(recData), 0, 0, sealOverhead - 1}, false},
		{[]byte{0, 0, 0, sealOverhead}, false},
		{[]byte{byte(recPorts) + 1, 0, 0, sealOverhead}, false},
		{[]byte{byte(recData), 0xff, 0xff, 0xff}, false},
	} {
		_, _, err := parseHeader(tc.hdr)
		if (err == nil) != tc.ok {
			t.Errorf("header %x: err %v, want ok=%v", tc.hdr, err, tc.ok)
		}
	}
}

func TestRecordSequenceLimit(t *testing.T) {
	s, _ := newSealer(testKey(t))
	s.seq = maxRecordsDir - 1
	if _, err := s.seal(nil, recData, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.seal(nil, recData, nil); !errors.Is(err, errTooMany) {
		t.Fatalf("record past the limit: %v", err)
	}
}

func TestPortsAndOpenPayloads(t *testing.T) {
	ports := []uint16{1, 22, 7777, 65535}
	got, err := decodePorts(encodePorts(ports))
	if err != nil || len(got) != len(ports) {
		t.Fatalf("ports round trip: %v %v", got, err)
	}
	for _, bad := range [][]byte{{0}, {0, 0}, {0, 5, 0, 5}, {0, 6, 0, 5}} {
		if _, err := decodePorts(bad); err == nil {
			t.Errorf("decodePorts(%x) accepted", bad)
		}
	}
	if p, err := decodeOpen([]byte{0x1e, 0x61}); err != nil || p != 7777 {
		t.Fatalf("decodeOpen: %d %v", p, err)
	}
	for _, bad := range [][]byte{nil, {1}, {0, 0}, {0, 1, 2}} {
		if _, err := decodeOpen(bad); err == nil {
			t.Errorf("decodeOpen(%x) accepted", bad)
		}
	}
}

func BenchmarkRecordSealOpen(b *testing.B) {
	key := testKey(b)
	s, _ := newSealer(key)
	p := make([]byte, maxPayload)
	var buf []byte
	b.SetBytes(maxPayload)
	for b.Loop() {
		buf, _ = s.seal(buf[:0], recData, p)
	}
}

// FuzzOpener feeds arbitrary bytes to the record reader: it must never
// panic, and whatever it accepts must have been sealed with the key.
func FuzzOpener(f *testing.F) {
	key := bytes.Repeat([]byte{7}, keyLen)
	s, _ := newSealer(key)
	valid, _ := s.seal(nil, recData, []byte("payload"))
	fin, _ := s.seal(nil, recFin, nil)
	f.Add(append(bytes.Clone(valid), fin...))
	f.Add(valid[:10])
	f.Add([]byte{byte(recData), 0, 0, 0})
	f.Add([]byte{byte(recPorts), 0x10, 0x00, 0x1c})
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := newOpener(bytes.NewReader(data), key)
		if err != nil {
			t.Fatal(err)
		}
		consumed := 0
		for range 64 {
			typ, p, err := o.next()
			if err != nil {
				return
			}
			if len(p) > maxPayload || typ < recData || typ > recPorts {
				t.Fatalf("opened an impossible record: type %d, %d bytes", typ, len(p))
			}
			consumed += headerLen + sealOverhead + len(p)
			if consumed > len(data) {
				t.Fatal("opened more than was read")
			}
		}
	})
}

func FuzzDecodePorts(f *testing.F) {
	f.Add(encodePorts([]uint16{22, 80}))
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ports, err := decodePorts(b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodePorts(ports), b) {
			t.Fatal("decodePorts accepted a non-canonical payload")
		}
	})
}
