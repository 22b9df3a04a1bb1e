package sagemaker

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"golang.org/x/sys/unix"
)

func TestWriteRecord(t *testing.T) {
	for _, tc := range []struct {
		data string
		size int64 // -1: unknown
		want string
	}{
		{"", 0, "\x0a\x23\xd7\xce\x00\x00\x00\x00"},
		{"a", 1, "\x0a\x23\xd7\xce\x01\x00\x00\x00a\x00\x00\x00"},
		{"abcd", 4, "\x0a\x23\xd7\xce\x04\x00\x00\x00abcd"},
		{"abcde", -1, "\x0a\x23\xd7\xce\x05\x00\x00\x00abcde\x00\x00\x00"},
	} {
		var b bytes.Buffer
		if err := writeRecord(&b, strings.NewReader(tc.data), tc.size); err != nil || b.String() != tc.want {
			t.Errorf("%q: %q %v, want %q", tc.data, b.String(), err, tc.want)
		}
	}
	// The length word's high 3 bits are the continuation flag: 0.
	var b bytes.Buffer
	writeRecord(&b, strings.NewReader(strings.Repeat("x", 1000)), 1000)
	if binary.LittleEndian.Uint32(b.Bytes()[:4]) != 0xced7230a || binary.LittleEndian.Uint32(b.Bytes()[4:8]) != 1000 || b.Len() != 1008 {
		t.Errorf("header % x, %d bytes", b.Bytes()[:8], b.Len())
	}
	if err := writeRecord(io.Discard, strings.NewReader("ab"), 3); !errors.Is(err, errRecordSize) {
		t.Errorf("short object: %v", err)
	}
	if err := writeRecord(io.Discard, strings.NewReader(""), maxRecord+1); !errors.Is(err, errRecordSize) {
		t.Errorf("object too large for a record: %v", err)
	}
}

func objects(n int) []stagedObject {
	var objs []stagedObject
	for i := range n {
		objs = append(objs, stagedObject{bucket: "b", key: fmt.Sprintf("p/%02d", i)})
	}
	return objs
}

func keys(objs []stagedObject) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.key)
	}
	return ks
}

func TestShard(t *testing.T) {
	objs := objects(5)
	for _, tc := range []struct {
		host, hosts int
		want        []string
	}{
		{0, 1, []string{"p/00", "p/01", "p/02", "p/03", "p/04"}},
		{0, 2, []string{"p/00", "p/02", "p/04"}},
		{1, 2, []string{"p/01", "p/03"}},
		{2, 3, []string{"p/02"}},
		{5, 6, nil},
	} {
		if got := keys(shard(objs, tc.host, tc.hosts)); !slices.Equal(got, tc.want) {
			t.Errorf("host %d of %d: %v, want %v", tc.host, tc.hosts, got, tc.want)
		}
	}
}

func TestShuffle(t *testing.T) {
	objs := objects(20)
	seed := int64(7)
	e0 := keys(epochObjects(objs, &seed, 0, 0, 1))
	if again := keys(epochObjects(objs, &seed, 0, 0, 1)); !slices.Equal(e0, again) {
		t.Fatalf("the same seed and epoch gave two orders:\n%v\n%v", e0, again)
	}
	e1 := keys(epochObjects(objs, &seed, 1, 0, 1))
	other := int64(8)
	if slices.Equal(e0, e1) || slices.Equal(e0, keys(epochObjects(objs, &other, 0, 0, 1))) || slices.Equal(e0, keys(objs)) {
		t.Fatalf("the order does not depend on the seed and the epoch: %v", e0)
	}
	if sorted := slices.Sorted(slices.Values(e1)); !slices.Equal(sorted, keys(objs)) {
		t.Fatalf("not a permutation: %v", e1)
	}
	if got := keys(epochObjects(objs, nil, 3, 0, 1)); !slices.Equal(got, keys(objs)) {
		t.Fatalf("without a seed: %v, want key order", got)
	}
	// The order is the documented one: by SHA-256 of "<seed>/<epoch>/s3://bucket/key".
	want := keys(objs)
	slices.SortFunc(want, func(a, b string) int {
		ha, hb := sha256.Sum256([]byte("7/1/s3://b/"+a)), sha256.Sum256([]byte("7/1/s3://b/"+b))
		return bytes.Compare(ha[:], hb[:])
	})
	if !slices.Equal(e1, want) {
		t.Fatalf("epoch 1: %v, want %v", e1, want)
	}
	// Sharding comes after shuffling: a host gets other objects each epoch.
	h0, h1 := keys(epochObjects(objs, &seed, 0, 0, 2)), keys(epochObjects(objs, &seed, 1, 0, 2))
	if len(h0) != 10 || slices.Equal(h0, h1) || !slices.Equal(h0, shardKeys(e0, 0, 2)) {
		t.Fatalf("host 0 of 2: epoch 0 %v, epoch 1 %v", h0, h1)
	}
}

func shardKeys(ks []string, host, hosts int) []string {
	var out []string
	for i, k := range ks {
		if i%hosts == host {
			out = append(out, k)
		}
	}
	return out
}

// fakeS3 serves objects from memory; fail, if set, replaces an object's
// body.
type fakeS3 struct {
	data map[string][]byte
	fail map[string]io.Reader
}

func (f *fakeS3) open(_ context.Context, obj stagedObject) (io.ReadCloser, int64, error) {
	if r, ok := f.fail[obj.key]; ok {
		return io.NopCloser(r), 1 << 20, nil
	}
	b, ok := f.data[obj.key]
	if !ok {
		return nil, 0, errors.New("NoSuchKey: The specified key does not exist.")
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func testPipe(t *testing.T, s3 *fakeS3, objs []stagedObject) *pipeChannel {
	t.Helper()
	p := &pipeChannel{dir: t.TempDir(), name: "train", objs: objs, hosts: 1, open: s3.open,
		mkfifo: func(path string) error { return unix.Mkfifo(path, 0o600) }}
	if err := p.mkfifo(p.path(0)); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs p and returns its result channel; the test ends it.
func start(t *testing.T, p *pipeChannel) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	done, finished := make(chan error, 1), make(chan struct{})
	go func() {
		done <- p.run(ctx)
		close(finished)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			t.Error("the pipe did not stop")
		}
	})
	return cancel, done
}

// readEpoch reads a FIFO to EOF, waiting for it to appear.
func readEpoch(t *testing.T, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		f, err := os.Open(path)
		if err == nil {
			defer f.Close()
			b, err := io.ReadAll(f)
			if err != nil {
				t.Fatalf("read %s: %v", path, err)
			}
			return b
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			t.Fatalf("open %s: %v", path, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gz(s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	w.Close()
	return b.Bytes()
}

func TestPipeEpochs(t *testing.T) {
	objs := objects(3)
	plain := &fakeS3{data: map[string][]byte{"p/00": []byte("zero\n"), "p/01": []byte("one\n"), "p/02": []byte("two\n")}}
	zipped := &fakeS3{data: map[string][]byte{"p/00": gz("zero\n"), "p/01": gz("one\n"), "p/02": gz("two\n")}}
	rec := func(s string) string {
		var b bytes.Buffer
		writeRecord(&b, strings.NewReader(s), int64(len(s)))
		return b.String()
	}
	seed := int64(3)
	for _, tc := range []struct {
		name     string
		s3       *fakeS3
		edit     func(p *pipeChannel)
		epoch0   string
		epoch1   string
		shuffled bool
	}{
		{"plain", plain, func(p *pipeChannel) {}, "zero\none\ntwo\n", "zero\none\ntwo\n", false},
		{"gzip", zipped, func(p *pipeChannel) { p.gunzip = true }, "zero\none\ntwo\n", "zero\none\ntwo\n", false},
		{"recordio", plain, func(p *pipeChannel) { p.wrap = true }, rec("zero\n") + rec("one\n") + rec("two\n"), rec("zero\n") + rec("one\n") + rec("two\n"), false},
		{"gzip and recordio", zipped, func(p *pipeChannel) { p.gunzip, p.wrap = true, true }, rec("zero\n") + rec("one\n") + rec("two\n"), rec("zero\n") + rec("one\n") + rec("two\n"), false},
		{"sharded", plain, func(p *pipeChannel) { p.host, p.hosts = 1, 2 }, "one\n", "one\n", false},
		{"shuffled", plain, func(p *pipeChannel) { p.seed = &seed }, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPipe(t, tc.s3, objs)
			tc.edit(p)
			start(t, p)
			e0, e1 := readEpoch(t, p.path(0)), readEpoch(t, p.path(1))
			if tc.shuffled {
				tc.epoch0, tc.epoch1 = "", ""
				for _, o := range epochObjects(objs, &seed, 0, 0, 1) {
					tc.epoch0 += string(plain.data[o.key])
				}
				for _, o := range epochObjects(objs, &seed, 1, 0, 1) {
					tc.epoch1 += string(plain.data[o.key])
				}
			}
			if string(e0) != tc.epoch0 || string(e1) != tc.epoch1 {
				t.Fatalf("epoch 0 %q, epoch 1 %q; want %q, %q", e0, e1, tc.epoch0, tc.epoch1)
			}
			// Epoch 2's FIFO is made before epoch 1 ends; the ended ones go.
			if _, err := os.Stat(p.path(0)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("epoch 0's FIFO is still there: %v", err)
			}
			if fi, err := os.Stat(p.path(2)); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
				t.Errorf("epoch 2's FIFO: %v %v", fi, err)
			}
		})
	}
}

// A job that ends while nobody reads, or while its reader does not read,
// stops its pipes at once.
func TestPipeStopsWithTheJob(t *testing.T) {
	big := &fakeS3{data: map[string][]byte{"p/00": bytes.Repeat([]byte("x"), 4<<20)}}
	for _, reader := range []bool{false, true} {
		p := testPipe(t, big, objects(1))
		cancel, done := start(t, p)
		if reader {
			// Opened, never read: the writer fills the FIFO and blocks.
			f, err := os.Open(p.path(0))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
		}
		time.Sleep(100 * time.Millisecond)
		select {
		case err := <-done:
			t.Fatalf("the pipe ended before the job: %v", err)
		default:
		}
		began := time.Now()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("reader %t: %v", reader, err)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("reader %t: the pipe did not stop with the job", reader)
		}
		if d := time.Since(began); d > time.Second {
			t.Errorf("reader %t: stopped after %s", reader, d)
		}
	}
}

// A reader that leaves early ends its epoch, not the stream.
func TestPipeReaderLeaves(t *testing.T) {
	p := testPipe(t, &fakeS3{data: map[string][]byte{"p/00": bytes.Repeat([]byte("x"), 4<<20)}}, objects(1))
	_, done := start(t, p)
	f, err := os.Open(p.path(0))
	if err != nil {
		t.Fatal(err)
	}
	f.Read(make([]byte, 10))
	f.Close()
	if b := readEpoch(t, p.path(1)); len(b) != 4<<20 {
		t.Fatalf("epoch 1 after a reader left: %d bytes", len(b))
	}
	select {
	case err := <-done:
		t.Fatalf("the pipe ended: %v", err)
	default:
	}
}

// An S3 error in the middle of an object ends the FIFO (the reader sees
// EOF, not a hang) and fails the stream with the object and the error.
func TestPipeSourceError(t *testing.T) {
	for _, tc := range []struct {
		name string
		s3   *fakeS3
		edit func(p *pipeChannel)
		want string
	}{
		{"read error", &fakeS3{data: map[string][]byte{"p/00": []byte("zero\n")},
			fail: map[string]io.Reader{"p/01": io.MultiReader(strings.NewReader("half"), iotest.ErrReader(errors.New("connection reset")))}},
			func(p *pipeChannel) {}, "s3://b/p/01: connection reset"},
		{"missing object", &fakeS3{data: map[string][]byte{"p/00": []byte("zero\n")}}, func(p *pipeChannel) {}, "s3://b/p/01: NoSuchKey"},
		{"not gzip", &fakeS3{data: map[string][]byte{"p/00": gz("zero\n"), "p/01": []byte("plain text, not gzip")}}, func(p *pipeChannel) { p.gunzip = true }, "s3://b/p/01: gunzip: gzip: invalid header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPipe(t, tc.s3, objects(2))
			tc.edit(p)
			failed := make(chan error, 1)
			p.fail = func(err error) { failed <- err }
			_, done := start(t, p)
			if b := readEpoch(t, p.path(0)); !bytes.HasPrefix(b, []byte("zero\n")) {
				t.Errorf("read %q before the error", b)
			}
			// The job heard of the failure before the reader saw the end.
			select {
			case err := <-failed:
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("fail got %v", err)
				}
			default:
				t.Error("the reader saw EOF before the job heard of the failure")
			}
			select {
			case err := <-done:
				var se *sourceError
				if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want a source error %q", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the pipe did not fail")
			}
		})
	}
}
