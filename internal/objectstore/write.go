package objectstore

import (
	"bufio"
	"crypto/md5" // md5.Size only: hashing goes through fipsexempt
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"convoy/internal/fipsexempt"
	"convoy/internal/objectstore/sealed"
)

// checksumAlgos are the flexible checksums S3 accepts, by header suffix.
var checksumAlgos = map[string]func() hash.Hash{
	"crc32":     func() hash.Hash { return crc32.NewIEEE() },
	"crc32c":    func() hash.Hash { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) },
	"crc64nvme": func() hash.Hash { return crc64.New(crc64.MakeTable(0x9a6c9329ac4bc9b5)) },
	"sha1":      fipsexempt.SHA1,
	"sha256":    sha256.New,
}

// requestedChecksum returns the checksum algorithm a request carries and the
// value it claims ("" when it is sent as a trailer, which the SigV4 layer
// verifies as the body ends).
func requestedChecksum(r *http.Request) (algo, value string, err error) {
	for name := range checksumAlgos {
		if v := r.Header.Get("X-Amz-Checksum-" + name); v != "" {
			return name, v, nil
		}
	}
	if t := strings.ToLower(r.Header.Get("X-Amz-Trailer")); strings.HasPrefix(t, "x-amz-checksum-") {
		algo = strings.TrimPrefix(t, "x-amz-checksum-")
	} else {
		algo = strings.ToLower(r.Header.Get("X-Amz-Sdk-Checksum-Algorithm"))
	}
	if algo != "" && checksumAlgos[algo] == nil {
		return "", "", s3err(http.StatusBadRequest, "InvalidRequest", "checksum algorithm %q is not supported", algo)
	}
	return algo, "", nil
}

// written is the result of storing one body.
type written struct {
	file     string
	size     int64
	md5      []byte
	checksum string // base64, of the algorithm asked for
}

// writeBody encrypts body into a new object file under dataKey and returns
// it once it is durable (synced and renamed into place). binding ties the
// file to its name, so a file copied over another is refused on read.
// On any error, nothing is left behind.
//
// withMD5 computes the MD5 that S3 uses as ETag; it costs more CPU than the
// encryption, so it is skipped where S3's ETag is not an MD5 anyway (SSE-KMS
// objects without Content-MD5).
func (s *Store) writeBody(r *http.Request, body io.Reader, dataKey []byte, limit int64, algo string, withMD5 bool) (written, error) {
	id := newID()
	tmp := filepath.Join(s.cfg.Dir, "tmp", id)
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return written{}, err
	}
	ok := false
	var direct *directFile
	defer func() {
		if !ok {
			if direct != nil {
				direct.release()
			}
			f.Close()
			os.Remove(tmp)
		}
	}()
	// A large body goes to the disk with O_DIRECT where the file system
	// allows it; a small one through the page cache, with a buffer that
	// holds a few sealed segments, or less for a small body.
	want := expectedLength(r)
	var sink interface {
		io.Writer
		Flush() error
	}
	if want < 0 || want >= directMin {
		if direct, err = newDirect(f); err == nil {
			sink = direct
		} else {
			direct = nil
		}
	}
	if sink == nil {
		bufSize := 256 << 10
		if want >= 0 && want < int64(bufSize)/2 {
			bufSize = int(want) + 4<<10
		}
		sink = bufio.NewWriterSize(&writeback{f: f}, bufSize)
	}
	enc, err := sealed.NewWriter(sink, dataKey, []byte(id), sealed.DefaultSegmentSize)
	if err != nil {
		return written{}, err
	}
	// The hashes run as the body is read, on this goroutine; sealing and
	// the file writes on pipeCopy's second one.
	var hashes []io.Writer
	var sum hash.Hash
	if withMD5 {
		sum = fipsexempt.MD5()
		hashes = append(hashes, sum)
	}
	var check hash.Hash
	if algo != "" {
		check = checksumAlgos[algo]()
		hashes = append(hashes, check)
	}
	src := io.LimitReader(body, limit+1)
	if len(hashes) > 0 {
		src = io.TeeReader(src, io.MultiWriter(hashes...))
	}
	n, err := pipeCopy(enc, src, want)
	if err != nil {
		return written{}, err
	}
	if n > limit {
		return written{}, s3err(http.StatusBadRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size of %d bytes", limit)
	}
	if want >= 0 && n != want {
		return written{}, s3err(http.StatusBadRequest, "IncompleteBody", "You did not provide the number of bytes specified by the Content-Length HTTP header (%d of %d).", n, want)
	}
	if err := enc.Close(); err != nil {
		return written{}, err
	}
	if err := sink.Flush(); err != nil {
		return written{}, err
	}
	if err := f.Sync(); err != nil {
		return written{}, err
	}
	if err := f.Close(); err != nil {
		return written{}, err
	}
	if err := s.promote(tmp, id); err != nil {
		return written{}, err
	}
	ok = true
	s.metrics.bytesIn.Add(float64(n))
	out := written{file: id, size: n}
	if sum != nil {
		out.md5 = sum.Sum(nil)
	} else {
		out.md5 = randomKey()[:md5.Size] // an opaque ETag, as S3 gives SSE-KMS objects
	}
	if check != nil {
		out.checksum = base64.StdEncoding.EncodeToString(check.Sum(nil))
	}
	return out, nil
}

// writeback starts the kernel's write-back of every few MiB as they are
// written, so the fsync that makes the object durable waits for the tail
// only, not the whole object.
type writeback struct {
	f       *os.File
	off     int64
	flushed int64
}

const writebackChunk = 8 << 20

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.flushed >= writebackChunk {
		unix.SyncFileRange(int(w.f.Fd()), w.flushed, w.off-w.flushed, unix.SYNC_FILE_RANGE_WRITE)
		w.flushed = w.off
	}
	return n, err
}

// expectedLength is the plaintext length the client announced, or -1.
func expectedLength(r *http.Request) int64 {
	if v := r.Header.Get("X-Amz-Decoded-Content-Length"); v != "" {
		var n int64
		if _, err := fmt.Sscan(v, &n); err == nil {
			return n
		}
	}
	if strings.Contains(r.Header.Get("Content-Encoding"), "aws-chunked") ||
		strings.HasPrefix(r.Header.Get("X-Amz-Content-Sha256"), "STREAMING-") {
		return -1
	}
	return r.ContentLength
}

// verifyDigests checks Content-MD5 and a checksum header against what was
// stored.
func verifyDigests(r *http.Request, w written, algo, claimed string) error {
	if v := r.Header.Get("Content-Md5"); v != "" {
		want, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(want) != md5.Size {
			return s3err(http.StatusBadRequest, "InvalidDigest", "The Content-MD5 you specified was invalid.")
		}
		if string(want) != string(w.md5) {
			return s3err(http.StatusBadRequest, "BadDigest", "The Content-MD5 you specified did not match what we received.")
		}
	}
	if claimed != "" && claimed != w.checksum {
		return s3err(http.StatusBadRequest, "BadDigest", "The %s you specified did not match the calculated checksum.", strings.ToUpper(algo))
	}
	return nil
}

// objectMeta is what a client set on an object besides its bytes. It is
// sealed under the master key at rest.
type objectMeta struct {
	ContentType        string            `json:"ct,omitempty"`
	ContentEncoding    string            `json:"ce,omitempty"`
	ContentDisposition string            `json:"cd,omitempty"`
	ContentLanguage    string            `json:"cl,omitempty"`
	CacheControl       string            `json:"cc,omitempty"`
	Expires            string            `json:"ex,omitempty"`
	User               map[string]string `json:"u,omitempty"`
}

func metaFromRequest(r *http.Request) objectMeta {
	m := objectMeta{
		ContentType: r.Header.Get("Content-Type"), ContentDisposition: r.Header.Get("Content-Disposition"),
		ContentLanguage: r.Header.Get("Content-Language"), CacheControl: r.Header.Get("Cache-Control"),
		Expires: r.Header.Get("Expires"),
	}
	// aws-chunked is a transfer detail, not the object's encoding.
	var encs []string
	for _, e := range strings.Split(r.Header.Get("Content-Encoding"), ",") {
		if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
			encs = append(encs, e)
		}
	}
	m.ContentEncoding = strings.Join(encs, ",")
	if m.ContentType == "" {
		m.ContentType = "binary/octet-stream"
	}
	for k, v := range r.Header {
		if name, ok := strings.CutPrefix(strings.ToLower(k), "x-amz-meta-"); ok {
			if m.User == nil {
				m.User = map[string]string{}
			}
			m.User[name] = strings.Join(v, ",")
		}
	}
	return m
}

func (s *Store) sealMeta(m objectMeta, objectID string) []byte {
	raw, _ := json.Marshal(m)
	return s.cfg.Box.Seal(raw, []byte("s3-meta:"+objectID))
}

func (s *Store) openMeta(sealedMeta []byte, objectID string) (objectMeta, error) {
	raw, err := s.cfg.Box.Open(sealedMeta, []byte("s3-meta:"+objectID))
	if err != nil {
		return objectMeta{}, fmt.Errorf("object %s metadata: %w", objectID, err)
	}
	var m objectMeta
	err = json.Unmarshal(raw, &m)
	return m, err
}

func (m objectMeta) apply(h http.Header) {
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set("Content-Type", m.ContentType)
	set("Content-Encoding", m.ContentEncoding)
	set("Content-Disposition", m.ContentDisposition)
	set("Content-Language", m.ContentLanguage)
	set("Cache-Control", m.CacheControl)
	set("Expires", m.Expires)
	for k, v := range m.User {
		h["X-Amz-Meta-"+k] = []string{v}
	}
}

// multipartETag is S3's ETag of a multipart object: the MD5 of the parts'
// MD5s, then "-" and the number of parts.
func multipartETag(partMD5s [][]byte) string {
	h := fipsexempt.MD5()
	for _, m := range partMD5s {
		h.Write(m)
	}
	return fmt.Sprintf("\"%x-%d\"", h.Sum(nil), len(partMD5s))
}

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}
