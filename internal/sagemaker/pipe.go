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
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"
)

// Pipe mode, as SageMaker documents it: for channel c a host's container
// finds the FIFO /opt/ml/input/data/c_0, which streams the channel's
// objects concatenated and then ends (EOF); c_1 then streams them again,
// and so on, one FIFO per epoch, for as long as the job runs. The objects go
// from convoy's S3 through memory into the FIFO: nothing of them is written
// to disk. Each host has FIFOs of its own.
//
// Written by hand: it is a loop over S3 objects into a FIFO, with gzip
// from the standard library and RecordIO's 8-byte header.

// pipeChannel streams one channel into one host's FIFOs.
type pipeChannel struct {
	dir    string // the host's data directory, /opt/ml/input/data inside
	name   string // the channel's name
	objs   []stagedObject
	host   int // the host's index among hosts
	hosts  int // how many hosts the objects are sharded over; 1: none
	seed   *int64
	gunzip bool // CompressionType Gzip
	wrap   bool // RecordWrapperType RecordIO
	open   func(ctx context.Context, obj stagedObject) (body io.ReadCloser, size int64, err error)
	mkfifo func(path string) error
	log    func(msg string, args ...any)
	// fail, if set, hears of the error that ends run before the reader
	// sees the FIFO end, so that the job fails for the data, not for what
	// the algorithm does with a short epoch.
	fail func(err error)
}

// path is the FIFO of an epoch.
func (p *pipeChannel) path(epoch int) string {
	return filepath.Join(p.dir, p.name+"_"+strconv.Itoa(epoch))
}

// run streams epoch after epoch until ctx ends. The FIFO of epoch 0 must
// exist; run makes the next epoch's before it ends one, so that a reader
// at EOF finds it, and removes each FIFO once its epoch is written. It
// returns nil when ctx ends, a *sourceError when the channel's data could
// not be read, and other errors for what convoy failed to do.
func (p *pipeChannel) run(ctx context.Context) error {
	for epoch := 0; ; epoch++ {
		f, err := openFIFO(ctx, p.path(epoch))
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			p.failed(err)
			return err
		}
		err = p.writeEpoch(ctx, f, epoch)
		if ctx.Err() != nil {
			f.Close()
			return nil
		}
		var se *sourceError
		if errors.As(err, &se) {
			p.failed(err)
			f.Close() // the reader sees the data end, not a hang
			return err
		}
		if err != nil && p.log != nil {
			// The reader closed its end before the epoch's end: that is
			// its choice, and the next epoch starts as usual.
			p.log("pipe reader left before the end of the epoch", "channel", p.name, "epoch", epoch, "err", err)
		}
		if err = p.mkfifo(p.path(epoch + 1)); err != nil {
			err = fmt.Errorf("make the FIFO of epoch %d: %w", epoch+1, err)
			p.failed(err)
		}
		f.Close()
		os.Remove(p.path(epoch))
		if err != nil {
			return err
		}
	}
}

func (p *pipeChannel) failed(err error) {
	if p.fail != nil {
		p.fail(err)
	}
}

// openFIFO opens a FIFO for writing once a reader has opened it, or fails
// when ctx ends. It follows no symbolic link and refuses anything but a
// FIFO (the directory is convoy's and the container mounts it read-only;
// this is defence in depth). A blocking open could not be abandoned; a non-blocking one
// fails with ENXIO until there is a reader. The file is returned in
// non-blocking mode, so the runtime's poller runs its writes and a write
// deadline interrupts them.
func openFIFO(ctx context.Context, path string) (*os.File, error) {
	wait := 5 * time.Millisecond
	for {
		fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err == nil {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
				unix.Close(fd)
				return nil, fmt.Errorf("open %s: not a FIFO", path)
			}
			return os.NewFile(uintptr(fd), path), nil
		}
		if err != unix.ENXIO && err != unix.EINTR {
			return nil, &os.PathError{Op: "open", Path: path, Err: err}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

// writeEpoch writes the host's objects of an epoch to f.
func (p *pipeChannel) writeEpoch(ctx context.Context, f *os.File, epoch int) error {
	stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	for _, obj := range epochObjects(p.objs, p.seed, epoch, p.host, p.hosts) {
		if err := p.writeObject(ctx, f, obj); err != nil {
			return err
		}
	}
	return nil
}

// writeObject streams one object, decompressed and wrapped as the channel
// asks.
func (p *pipeChannel) writeObject(ctx context.Context, w io.Writer, obj stagedObject) error {
	body, size, err := p.open(ctx, obj)
	if err != nil {
		return &sourceError{obj, err}
	}
	defer func() { body.Close() }() // body may be reopened below
	var r io.Reader = body
	if p.gunzip {
		gz, err := gzip.NewReader(body)
		if err != nil {
			return &sourceError{obj, fmt.Errorf("gunzip: %w", err)}
		}
		r, size = gz, -1
		if p.wrap {
			// A RecordIO header needs the length first. Rather than hold
			// the decompressed object (up to maxRecord) in memory,
			// decompress it once to count, then again to stream.
			n, err := io.Copy(io.Discard, io.LimitReader(&sourceReader{obj: obj, r: gz}, maxRecord+1))
			if err != nil {
				return err
			}
			if n > maxRecord {
				return &sourceError{obj, fmt.Errorf("%w: more than %d bytes", errRecordSize, maxRecord)}
			}
			again, _, err := p.open(ctx, obj)
			if err != nil {
				return &sourceError{obj, err}
			}
			body.Close()
			body = again
			if gz, err = gzip.NewReader(body); err != nil {
				return &sourceError{obj, fmt.Errorf("gunzip: %w", err)}
			}
			r, size = gz, n
		}
	}
	r = &sourceReader{obj: obj, r: r}
	if !p.wrap {
		_, err = io.Copy(w, r)
		return err
	}
	err = writeRecord(w, r, size)
	if errors.Is(err, errRecordSize) {
		return &sourceError{obj, err}
	}
	return err
}

// sourceError is a failure to read a channel's data, as opposed to the
// reader of the FIFO going away: it fails the job.
type sourceError struct {
	obj stagedObject
	err error
}

func (e *sourceError) Error() string {
	return fmt.Sprintf("s3://%s/%s: %s", e.obj.bucket, e.obj.key, s3Error(e.err))
}

func (e *sourceError) Unwrap() error { return e.err }

// sourceReader marks its reader's errors as the source's.
type sourceReader struct {
	obj stagedObject
	r   io.Reader
}

func (s *sourceReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if err != nil && err != io.EOF {
		err = &sourceError{s.obj, err}
	}
	return n, err
}

// MXNet RecordIO (dmlc-core recordio.h), which SageMaker's RecordWrapperType
// RecordIO writes: each record is the magic number, a word whose low 29 bits
// are the length and whose high 3 bits are the continuation flag (0: the
// whole record), then the data, zero-padded to a multiple of 4 bytes; both
// words little-endian.
const (
	recordIOMagic = 0xced7230a
	maxRecord     = 1<<29 - 1
)

var errRecordSize = errors.New("object does not fit one RecordIO record")

// writeRecord writes size bytes of r as one record. With size < 0 (a
// decompressed object) r is read into memory first to learn its length.
func writeRecord(w io.Writer, r io.Reader, size int64) error {
	if size < 0 {
		b, err := io.ReadAll(io.LimitReader(r, maxRecord+1))
		if err != nil {
			return err
		}
		r, size = bytes.NewReader(b), int64(len(b))
	}
	if size > maxRecord {
		return fmt.Errorf("%w: more than %d bytes", errRecordSize, maxRecord)
	}
	var h [8]byte
	binary.LittleEndian.PutUint32(h[:4], recordIOMagic)
	binary.LittleEndian.PutUint32(h[4:], uint32(size))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	n, err := io.CopyN(w, r, size)
	if err == io.EOF {
		return fmt.Errorf("%w: %d bytes, not the %d of its Content-Length", errRecordSize, n, size)
	}
	if err != nil {
		return err
	}
	if pad := (4 - size%4) % 4; pad > 0 {
		_, err = w.Write(make([]byte, pad))
	}
	return err
}

// epochObjects is what host (of hosts) gets in an epoch: the objects in
// key order (a manifest's: its order), or shuffled for the epoch when seed
// is set, then every hosts-th of them from the host's index on
// (ShardedByS3Key; hosts = 1: all). Shuffling before sharding gives a host
// different objects each epoch, as on SageMaker.
func epochObjects(objs []stagedObject, seed *int64, epoch, host, hosts int) []stagedObject {
	if seed != nil {
		objs = shuffled(objs, *seed, epoch)
	}
	return shard(objs, host, hosts)
}

// shard returns the objects whose index mod hosts is host.
func shard(objs []stagedObject, host, hosts int) []stagedObject {
	if hosts <= 1 {
		return objs
	}
	var out []stagedObject
	for i, o := range objs {
		if i%hosts == host {
			out = append(out, o)
		}
	}
	return out
}

// shuffled orders the objects by the SHA-256 of "<seed>/<epoch>/s3://bucket/key":
// an order that the seed and the epoch decide, the same on every convoy
// version and reproducible outside it.
func shuffled(objs []stagedObject, seed int64, epoch int) []stagedObject {
	type keyed struct {
		sum [sha256.Size]byte
		obj stagedObject
	}
	ks := make([]keyed, len(objs))
	for i, o := range objs {
		ks[i] = keyed{sha256.Sum256(fmt.Appendf(nil, "%d/%d/s3://%s/%s", seed, epoch, o.bucket, o.key)), o}
	}
	slices.SortStableFunc(ks, func(a, b keyed) int { return bytes.Compare(a.sum[:], b.sum[:]) })
	out := make([]stagedObject, len(ks))
	for i, k := range ks {
		out[i] = k.obj
	}
	return out
}

// addPipes readies a Pipe-mode channel on every host: the FIFOs of epoch
// 0 exist before the containers start.
func (j *jobRun) addPipes(c Channel, objs []stagedObject) error {
	hosts := 1
	if c.sharded() {
		hosts = len(j.hosts)
	}
	for i, h := range j.hosts {
		p := &pipeChannel{
			dir: j.dataDir(h), name: c.ChannelName, objs: objs,
			host: i % hosts, hosts: hosts, seed: c.seed(),
			gunzip: c.CompressionType == "Gzip", wrap: c.RecordWrapperType == "RecordIO",
			open: j.openObject, mkfifo: j.mkfifo, log: j.log.Info,
		}
		if err := p.mkfifo(p.path(0)); err != nil {
			return err
		}
		j.pipes = append(j.pipes, p)
	}
	return nil
}

// mkfifo makes a FIFO that only the image user may read, and nobody in the
// container write.
func (j *jobRun) mkfifo(path string) error {
	if err := unix.Mkfifo(path, 0o400); err != nil {
		return &os.PathError{Op: "mkfifo", Path: path, Err: err}
	}
	return os.Lchown(path, int(j.uid), int(j.gid))
}

// openObject opens an object with the job role's credentials.
func (j *jobRun) openObject(ctx context.Context, obj stagedObject) (io.ReadCloser, int64, error) {
	out, err := j.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: &obj.bucket, Key: &obj.key})
	if err != nil {
		return nil, 0, err
	}
	size := int64(-1)
	if out.ContentLength != nil {
		size = *out.ContentLength
	}
	return out.Body, size, nil
}

// streamPipes streams every Pipe-mode channel until stop is called. A
// stream that fails fails the job through fail, with the reason.
func (j *jobRun) streamPipes(ctx context.Context, fail context.CancelCauseFunc) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, p := range j.pipes {
		p.fail = func(err error) {
			reason := fmt.Sprintf("InternalServerError: Pipe mode input of channel %s: %v", p.name, err)
			if se := (*sourceError)(nil); errors.As(err, &se) {
				reason = fmt.Sprintf("ClientError: Data download failed: s3://%s/%s for channel %s with role %s: %s",
					se.obj.bucket, se.obj.key, p.name, j.job.Role.ARN, s3Error(se.err))
			}
			j.log.Error("pipe mode input failed; stopping the job", "channel", p.name, "dir", p.dir, "err", err)
			fail(&jobFailure{clip(reason)})
		}
		wg.Go(func() { p.run(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}
