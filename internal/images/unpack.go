package images

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"golang.org/x/sys/unix"

	"convoy/internal/fsutil"
)

// RootFS returns the directory holding img's unpacked root filesystem,
// unpacking it on first use: into a temporary directory, renamed into
// DATA/images/rootfs/<hex> when complete, so a directory there is always
// whole. Concurrent callers, in this process or another, unpack once.
//
// The directory is shared by every job that runs the image: use it read-only
// (a read-only bind mount or an overlay lower directory), and never resolve
// a path in it from the host without confining symlinks to it.
func (s *Store) RootFS(ctx context.Context, img Image) (string, error) {
	h, err := v1.NewHash(img.Digest)
	if err != nil {
		return "", fmt.Errorf("rootfs of %q: %w", img.Ref, err)
	}
	final := filepath.Join(s.rootfsDir(), h.Hex)
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil
	}
	unlockGC, err := flock(ctx, s.gcLock(), syscall.LOCK_SH)
	if err != nil {
		return "", err
	}
	defer unlockGC()
	unlock, err := flock(ctx, filepath.Join(s.lockDir(), h.Hex+".lock"), syscall.LOCK_EX)
	if err != nil {
		return "", err
	}
	defer unlock()
	if fi, err := os.Stat(final); err == nil && fi.IsDir() {
		return final, nil // another caller unpacked it while we waited
	}
	tmp, err := os.MkdirTemp(s.tmpDir(), "rootfs-"+h.Hex[:12]+"-")
	if err != nil {
		return "", err
	}
	if err := s.Unpack(ctx, img, tmp); err != nil {
		removeTree(tmp)
		return "", err
	}
	// Make the files durable before the rename publishes them: one syncfs
	// instead of an fsync per file, which would cost minutes on a large image.
	if err := syncFS(tmp); err != nil {
		removeTree(tmp)
		return "", err
	}
	if err := os.Rename(tmp, final); err != nil {
		removeTree(tmp)
		return "", err
	}
	return final, fsutil.SyncDir(s.rootfsDir())
}

func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs %s: %w", dir, err)
	}
	return nil
}

// Unpack extracts img's root filesystem into dir, which must be empty or
// absent: the layers are applied in order, honouring OCI/AUFS whiteouts
// (.wh.NAME deletes NAME from the layers below, .wh..wh..opq empties its
// directory of them). Modes, symlinks, hardlinks and modification times are
// kept, and ownership when running as root; device nodes are not created
// (the runtime makes /dev), nor are extended attributes.
//
// It is a security boundary: an entry whose name is absolute or has a ".."
// component, and any write, link or delete that would go through a symlink
// to outside dir (or through an absolute symlink), fails the unpack; nothing
// is written outside dir. A symlink as the last component of an entry's name
// is replaced, never written through, as Docker does. Every layer's digest
// and diff_id is checked as it is read. On error, what was unpacked is removed.
func (s *Store) Unpack(ctx context.Context, img Image, dir string) (err error) {
	_, m, err := s.manifest(img.Digest)
	if err != nil {
		return err
	}
	cfg, err := s.config(m)
	if err != nil {
		return err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("unpack %s: %d layers but %d diff_ids", img.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}

	created := false
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}
		created = true
	case err != nil:
		return fmt.Errorf("unpack into %s: %w", dir, err)
	case len(ents) > 0:
		return fmt.Errorf("unpack into %s: directory is not empty", dir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	defer func() {
		if err == nil {
			return
		}
		if created {
			removeTree(dir)
			return
		}
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			removeTree(filepath.Join(dir, e.Name()))
		}
	}()

	budget, err := diskBudget(dir)
	if err != nil {
		return err
	}
	u := &unpacker{root: root, asRoot: os.Geteuid() == 0, dirs: map[string]*tar.Header{}, left: budget}
	for i, l := range m.Layers {
		if err := s.unpackLayer(ctx, u, l, cfg.RootFS.DiffIDs[i]); err != nil {
			return fmt.Errorf("unpack %s layer %d (%s): %w", img.Ref, i+1, l.Digest, err)
		}
	}
	if err := u.finish(); err != nil {
		return fmt.Errorf("unpack %s: %w", img.Ref, err)
	}
	return nil
}

// unpackLayer applies one stored layer, checking the blob against its digest
// and the uncompressed stream against its diff_id.
func (s *Store) unpackLayer(ctx context.Context, u *unpacker, l v1.Descriptor, diffID v1.Hash) error {
	if l.Digest.Algorithm != "sha256" || diffID.Algorithm != "sha256" {
		return errors.New("only sha256 digests are supported")
	}
	f, err := os.Open(s.blobPath(l.Digest))
	if err != nil {
		return err
	}
	defer f.Close()
	blobHash := sha256.New()
	blob := io.TeeReader(ctxReader{ctx, f}, blobHash)
	layer, err := partial.CompressedToLayer(sourceLayer{rc: io.NopCloser(blob), size: l.Size})
	if err != nil {
		return err
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	defer rc.Close()
	diffHash := sha256.New()
	if err := u.apply(ctx, io.TeeReader(rc, diffHash)); err != nil {
		return err
	}
	// Read to the end (tar padding, compression trailer) so both hashes cover everything.
	if _, err := io.Copy(diffHash, rc); err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if _, err := io.Copy(io.Discard, blob); err != nil {
		return err
	}
	if err := checkHash(blobHash, l.Digest); err != nil {
		return fmt.Errorf("stored blob is corrupt: %w", err)
	}
	if err := checkHash(diffHash, diffID); err != nil {
		return fmt.Errorf("uncompressed layer does not match the config's diff_id: %w", err)
	}
	return nil
}

func checkHash(h hash.Hash, want v1.Hash) error {
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return fmt.Errorf("digest mismatch: want %s, content has sha256:%s", want, got)
	}
	return nil
}

// safeRel turns a tar entry name into a clean slash-separated path relative
// to the unpack root ("." for the root itself). It refuses empty and absolute
// names and any ".." component, even one that would stay inside the root:
// layers written by real tools never have them. What it accepts, joined to
// any directory, names that directory or something beneath it.
func safeRel(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	if strings.HasPrefix(name, "/") {
		return "", errors.New("absolute path")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("NUL in name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errors.New(`".." in path`)
		}
	}
	return path.Clean(name), nil
}

// unpacker applies layers to root.
type unpacker struct {
	root   *os.Root
	asRoot bool
	// dirs holds each directory's header: its mode, owner and times are set
	// after the last layer, deepest first, so that a read-only directory
	// does not stop a later entry from being written into it.
	dirs map[string]*tar.Header
	// left is how many bytes of file content may still be written
	// (diskBudget): a layer of a few bytes can declare a file of a
	// terabyte (a sparse entry, whose holes tar reads as zeros).
	left int64
}

func (u *unpacker) apply(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	added := map[string]bool{} // paths this layer created, which its opaque whiteouts keep
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name, err := safeRel(hdr.Name)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		dir, base := path.Split(name)
		dir = path.Clean(dir + ".")
		if strings.HasPrefix(base, ".wh.") {
			if err := u.whiteout(dir, base, added); err != nil {
				return fmt.Errorf("whiteout %q: %w", hdr.Name, err)
			}
			continue
		}
		for p := name; p != "."; p = path.Dir(p) {
			added[p] = true
		}
		if err := u.entry(hdr, name, tr); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh." // AUFS bookkeeping (.wh..wh.plnk, …) and the opaque marker
	whiteoutOpaque = ".wh..wh..opq"
)

func (u *unpacker) whiteout(dir, base string, added map[string]bool) error {
	if base == whiteoutOpaque {
		return u.opaque(dir, added)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." {
		return errors.New("names no file")
	}
	target := path.Join(dir, victim)
	u.forget(target)
	return u.root.RemoveAll(target)
}

// opaque removes what the layers below put in dir, keeping what this layer added.
func (u *unpacker) opaque(dir string, added map[string]bool) error {
	fi, err := u.root.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
		return nil // nothing below to hide
	}
	if err != nil {
		return err
	}
	f, err := u.root.Open(dir)
	if err != nil {
		return err
	}
	ents, err := f.ReadDir(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := path.Join(dir, e.Name())
		switch {
		case !added[p]:
			u.forget(p)
			if err := u.root.RemoveAll(p); err != nil {
				return err
			}
		case e.IsDir():
			if err := u.opaque(p, added); err != nil {
				return err
			}
		}
	}
	return nil
}

func (u *unpacker) entry(hdr *tar.Header, name string, r io.Reader) error {
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return errors.New("the root can only be a directory")
		}
		u.dirs["."] = hdr
		return nil
	}
	if parent := path.Dir(name); parent != "." {
		if err := u.root.MkdirAll(parent, 0o700); err != nil {
			return err
		}
		// A directory no entry declared is 0755 root:root, as Docker makes it.
		for p := parent; p != "."; p = path.Dir(p) {
			if u.dirs[p] == nil {
				u.dirs[p] = &tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}
			}
		}
	}
	if hdr.Typeflag == tar.TypeDir {
		fi, err := u.root.Lstat(name)
		if err == nil && !fi.IsDir() {
			if err := u.root.Remove(name); err != nil {
				return err
			}
		}
		if err != nil || !fi.IsDir() {
			if err := u.root.Mkdir(name, 0o700); err != nil {
				return err
			}
		}
		u.dirs[name] = hdr
		return nil
	}
	if hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock || hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	// Everything else replaces what is there: a file, a symlink (not followed)
	// or a whole directory.
	var target string
	if hdr.Typeflag == tar.TypeLink {
		t, err := safeRel(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		if t == name {
			return nil
		}
		target = t
	}
	if fi, err := u.root.Lstat(name); err == nil {
		if fi.IsDir() {
			u.forget(name)
			err = u.root.RemoveAll(name)
		} else {
			err = u.root.Remove(name)
		}
		if err != nil {
			return err
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse:
		return u.file(hdr, name, r)
	case tar.TypeSymlink:
		if err := u.root.Symlink(hdr.Linkname, name); err != nil {
			return err
		}
		return u.chown(name, hdr, true)
	case tar.TypeLink:
		return u.root.Link(target, name)
	case tar.TypeFifo:
		parent, err := u.root.Open(path.Dir(name))
		if err != nil {
			return err
		}
		defer parent.Close()
		if err := syscall.Mknodat(int(parent.Fd()), path.Base(name), syscall.S_IFIFO|uint32(hdr.Mode&0o777), 0); err != nil {
			return &fs.PathError{Op: "mkfifo", Path: name, Err: err}
		}
		if err := u.chown(name, hdr, true); err != nil {
			return err
		}
		return u.root.Chmod(name, hdr.FileInfo().Mode().Perm())
	default:
		return nil // types no image needs (and tar's own bookkeeping)
	}
}

// MaxExpandedSize bounds what an image may take on disk once unpacked (its
// files' sizes), and what a layer may decompress to at import: more than
// the largest ML images (CUDA frameworks are 15–25 GB), far less than a
// crafted layer of a few bytes can declare. diskBudget also keeps
// freeReserve of the disk free.
var MaxExpandedSize int64 = 64 << 30

const freeReserve = 1 << 30

var errTooLarge = errors.New("would take the image past its disk budget: the lesser of images.MaxExpandedSize (64 GiB) and the free space of the data directory's disk less 1 GiB; refusing the image (a crafted layer?) — free disk space if it is legitimate")

// diskBudget is how many bytes may be written under dir: MaxExpandedSize,
// or less when the disk has less free space (less freeReserve).
func diskBudget(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", dir, err)
	}
	free := int64(st.Bavail)*int64(st.Bsize) - freeReserve
	return max(0, min(MaxExpandedSize, free)), nil
}

// budgetReader fails, rather than cuts short, a stream longer than left
// bytes.
type budgetReader struct {
	r    io.Reader
	left int64
}

func (b *budgetReader) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		if n, err := b.r.Read(one[:]); n == 0 {
			return 0, err
		}
		return 0, errTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

// forget drops the pending metadata of p and everything beneath it, which is being removed.
func (u *unpacker) forget(p string) {
	delete(u.dirs, p)
	for n := range u.dirs {
		if strings.HasPrefix(n, p+"/") {
			delete(u.dirs, n)
		}
	}
}

func (u *unpacker) file(hdr *tar.Header, name string, r io.Reader) error {
	if hdr.Size > u.left {
		return fmt.Errorf("%s (%d bytes) %w", name, hdr.Size, errTooLarge)
	}
	u.left -= hdr.Size
	f, err := u.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(f, io.LimitReader(r, hdr.Size)); err != nil {
		return err
	}
	if u.asRoot {
		if err := f.Chown(hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if err := f.Chmod(fileMode(hdr)); err != nil { // after chown, which clears setuid
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return u.root.Chtimes(name, atime(hdr), hdr.ModTime)
}

func (u *unpacker) chown(name string, hdr *tar.Header, noFollow bool) error {
	if !u.asRoot {
		return nil
	}
	if noFollow {
		return u.root.Lchown(name, hdr.Uid, hdr.Gid)
	}
	return u.root.Chown(name, hdr.Uid, hdr.Gid)
}

// finish sets the directories' owners, modes and times, deepest first.
func (u *unpacker) finish() error {
	names := make([]string, 0, len(u.dirs)+1)
	for n := range u.dirs {
		names = append(names, n)
	}
	if u.dirs["."] == nil {
		u.dirs["."] = &tar.Header{Typeflag: tar.TypeDir, Mode: 0o755}
		names = append(names, ".")
	}
	sort.Slice(names, func(i, j int) bool {
		di, dj := depth(names[i]), depth(names[j])
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		hdr := u.dirs[n]
		fi, err := u.root.Lstat(n)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.IsDir()) {
			continue // replaced or whited out by a later layer
		}
		if err != nil {
			return err
		}
		if err := u.chown(n, hdr, false); err != nil {
			return err
		}
		if err := u.root.Chmod(n, fileMode(hdr)); err != nil {
			return err
		}
		if !hdr.ModTime.IsZero() {
			if err := u.root.Chtimes(n, atime(hdr), hdr.ModTime); err != nil {
				return err
			}
		}
	}
	return nil
}

func depth(p string) int {
	if p == "." {
		return 0
	}
	return strings.Count(p, "/") + 1
}

// fileMode is the header's permission bits with setuid, setgid and sticky.
func fileMode(hdr *tar.Header) fs.FileMode {
	m := fs.FileMode(hdr.Mode & 0o777)
	if hdr.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if hdr.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if hdr.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

func atime(hdr *tar.Header) time.Time {
	if hdr.AccessTime.IsZero() {
		return hdr.ModTime
	}
	return hdr.AccessTime
}
