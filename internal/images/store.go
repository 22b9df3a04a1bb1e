// Package images is convoy's local container image store: images are
// imported from files (`docker save` archives and OCI image layouts), kept
// content-addressed on disk, resolved from a training job's TrainingImage, and
// unpacked into root filesystems for the OCI runtime. There is no registry
// client and no Docker daemon.
//
// Layout under DATA/images (directories 0700, files 0600):
//
//	blobs/sha256/<hex>   manifests, configs and layers, named by their digest
//	refs.json            reference → manifest digest (written atomically)
//	refs.lock            flock: serialises read-modify-write of refs.json
//	gc.lock              flock: shared while blobs are written or read, exclusive to collect garbage
//	rootfs/<hex>         an image's unpacked root filesystem, by manifest digest (read-only use)
//	locks/<hex>.lock     flock: one unpack of an image at a time
//	tmp/                 blobs and root filesystems being written, renamed into place when complete
//
// Every coordination between processes (`convoy images import` next to a
// running `convoy up`) goes through these files, so a Store holds no state
// and any number may be open at once.
//
// go-containerregistry supplies the formats: references (pkg/name), the
// manifest, index and config types (pkg/v1), the `docker save` manifest
// (pkg/v1/tarball) and layer decompression (pkg/v1/partial). Reading the
// files, verifying digests and extracting layers are written here, because
// those are the security boundary and the library's readers neither verify
// what they read nor read an OCI layout that is still a tar file. The
// extraction uses os.Root, so the kernel, not string checks alone, keeps
// every file operation inside the target directory.
package images

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"convoy/internal/fsutil"
)

// ErrNotFound is returned (wrapped, with a message that says how to import
// the image) by Resolve and Remove for a reference the store does not have.
var ErrNotFound = errors.New("image not found")

// Store is the image store in one data directory.
type Store struct {
	dataDir string
	dir     string // DATA/images
}

// Image is an imported image.
type Image struct {
	Ref     string    // familiar reference it was imported as: trainer:1
	Digest  string    // manifest digest: sha256:…
	Size    int64     // bytes stored: manifest, config and layers
	Created time.Time // from the image config; zero if the image does not say
	Config  ImageConfig
}

// ImageConfig is what the executor needs from the image config.
type ImageConfig struct {
	Entrypoint, Cmd, Env []string
	WorkingDir, User     string
}

// Open opens (creating it if needed) the image store under dataDir, the same
// directory `convoy up --data` uses.
func Open(dataDir string) (*Store, error) {
	s := &Store{dataDir: dataDir, dir: filepath.Join(dataDir, "images")}
	for _, d := range []string{s.blobDir(), s.rootfsDir(), s.lockDir(), s.tmpDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("open image store: %w", err)
		}
	}
	return s, nil
}

func (s *Store) blobDir() string   { return filepath.Join(s.dir, "blobs", "sha256") }
func (s *Store) rootfsDir() string { return filepath.Join(s.dir, "rootfs") }
func (s *Store) lockDir() string   { return filepath.Join(s.dir, "locks") }
func (s *Store) tmpDir() string    { return filepath.Join(s.dir, "tmp") }
func (s *Store) refsPath() string  { return filepath.Join(s.dir, "refs.json") }
func (s *Store) refsLock() string  { return filepath.Join(s.dir, "refs.lock") }
func (s *Store) gcLock() string    { return filepath.Join(s.dir, "gc.lock") }

func (s *Store) blobPath(h v1.Hash) string { return filepath.Join(s.blobDir(), h.Hex) }

// refsFile is refs.json.
type refsFile struct {
	Version int                 `json:"version"`
	Refs    map[string]refEntry `json:"refs"` // canonical reference → entry
}

type refEntry struct {
	Digest   string    `json:"digest"`
	Imported time.Time `json:"imported"`
}

const refsVersion = 1

// readRefs reads refs.json. It needs no lock: the file is only ever replaced
// by a rename, so a reader sees one complete version.
func (s *Store) readRefs() (*refsFile, error) {
	rf := &refsFile{Version: refsVersion, Refs: map[string]refEntry{}}
	b, err := os.ReadFile(s.refsPath())
	if errors.Is(err, os.ErrNotExist) {
		return rf, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, rf); err != nil {
		return nil, fmt.Errorf("read %s: %w", s.refsPath(), err)
	}
	if rf.Version != refsVersion {
		return nil, fmt.Errorf("read %s: unknown version %d", s.refsPath(), rf.Version)
	}
	if rf.Refs == nil {
		rf.Refs = map[string]refEntry{}
	}
	return rf, nil
}

// updateRefs applies fn to refs.json under refs.lock and writes the result atomically.
func (s *Store) updateRefs(ctx context.Context, fn func(*refsFile) error) error {
	unlock, err := flock(ctx, s.refsLock(), syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	rf, err := s.readRefs()
	if err != nil {
		return err
	}
	if err := fn(rf); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rf, "", "  ")
	if err != nil {
		return err
	}
	return fsutil.WriteFileAtomic(s.refsPath(), append(b, '\n'), 0o600)
}

// Resolve finds the image a reference names. The rules, in order:
//
//  1. A reference with a digest (name@sha256:…, or a bare sha256:…) resolves to
//     the imported image whose manifest has that digest, whatever name it was
//     imported under: the digest pins the content. When several references
//     point at it, one in the same repository is reported.
//  2. Otherwise the reference is normalised like Docker's (trainer →
//     docker.io/library/trainer:latest) and looked up exactly.
//  3. An Amazon ECR reference, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG,
//     that was not imported under that full name resolves to REPO:TAG as
//     imported without a registry. So a job written for SageMaker runs with an
//     image imported as trainer:1 when it asks for
//     123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1. Only ECR
//     registries get this rule: a reference to any other registry must have
//     been imported under that registry's name.
//
// An unknown reference is an error that wraps ErrNotFound and says how to
// import it.
func (s *Store) Resolve(ref string) (Image, error) {
	r, err := parseReference(ref)
	if err != nil {
		return Image{}, err
	}
	rf, err := s.readRefs()
	if err != nil {
		return Image{}, err
	}
	if r.digest != "" {
		var keys []string
		for k, e := range rf.Refs {
			if e.Digest == r.digest {
				keys = append(keys, k)
			}
		}
		sort.Slice(keys, func(i, j int) bool { // same repository first, then by name
			si, sj := r.sameRepoKey(keys[i]), r.sameRepoKey(keys[j])
			if si != sj {
				return si
			}
			return keys[i] < keys[j]
		})
		if len(keys) > 0 {
			return s.load(keys[0], r.digest)
		}
		return Image{}, s.notFound(r, ref)
	}
	if e, ok := rf.Refs[r.String()]; ok {
		return s.load(r.String(), e.Digest)
	}
	if short, ok := r.shortName(); ok {
		if e, ok := rf.Refs[short.String()]; ok {
			return s.load(short.String(), e.Digest)
		}
	}
	return Image{}, s.notFound(r, ref)
}

func (r reference) sameRepoKey(key string) bool {
	stored, err := parseReference(key)
	return err == nil && r.sameRepo(stored)
}

func (s *Store) notFound(r reference, asked string) error {
	importCmd := "convoy images import --data " + s.dataDir + " FILE"
	if r.digest != "" {
		return fmt.Errorf("%w: no image in the image store under %s has digest %s (asked for %q); import the image with: %s NAME:TAG",
			ErrNotFound, s.dir, r.digest, asked, importCmd)
	}
	hint := ""
	importAs := r
	if short, ok := r.shortName(); ok {
		importAs = short
		hint = " (an ECR reference also finds the image imported under its short name)"
	}
	return fmt.Errorf("%w: image %q is not in the image store under %s; import it with: %s %s%s",
		ErrNotFound, asked, s.dir, importCmd, importAs.Familiar(), hint)
}

// List returns every imported reference, sorted by reference.
func (s *Store) List() ([]Image, error) {
	rf, err := s.readRefs()
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(rf.Refs))
	for k := range rf.Refs {
		keys = append(keys, k)
	}
	imgs := make([]Image, 0, len(keys))
	for _, k := range keys {
		img, err := s.load(k, rf.Refs[k].Digest)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (convoy images rm it, then import it again)", k, err)
		}
		imgs = append(imgs, img)
	}
	slices.SortFunc(imgs, func(a, b Image) int { return strings.Compare(a.Ref, b.Ref) })
	return imgs, nil
}

// Remove deletes a reference (exactly as imported, normalised: trainer:1 and
// docker.io/library/trainer:1 are the same), then deletes the blobs and
// unpacked root filesystems no remaining reference needs. Garbage collection
// is skipped, and done by a later Remove, while an import or unpack is in
// progress.
func (s *Store) Remove(ref string) error {
	r, err := parseReference(ref)
	if err != nil {
		return err
	}
	if r.digest != "" {
		return fmt.Errorf("remove %q: remove an image by the NAME:TAG it was imported as", ref)
	}
	ctx := context.Background()
	err = s.updateRefs(ctx, func(rf *refsFile) error {
		if _, ok := rf.Refs[r.String()]; !ok {
			return fmt.Errorf("%w: %q is not in the image store under %s", ErrNotFound, ref, s.dir)
		}
		delete(rf.Refs, r.String())
		return nil
	})
	if err != nil {
		return err
	}
	return s.collect()
}

// load builds the Image for a stored reference from its manifest and config.
func (s *Store) load(key, digest string) (Image, error) {
	r, err := parseReference(key)
	if err != nil {
		return Image{}, err
	}
	raw, m, err := s.manifest(digest)
	if err != nil {
		return Image{}, err
	}
	cfg, err := s.config(m)
	if err != nil {
		return Image{}, err
	}
	img := Image{
		Ref:     r.Familiar(),
		Digest:  digest,
		Size:    int64(len(raw)) + m.Config.Size,
		Created: cfg.Created.Time,
		Config: ImageConfig{
			Entrypoint: cfg.Config.Entrypoint,
			Cmd:        cfg.Config.Cmd,
			Env:        cfg.Config.Env,
			WorkingDir: cfg.Config.WorkingDir,
			User:       cfg.Config.User,
		},
	}
	for _, l := range m.Layers {
		img.Size += l.Size
	}
	return img, nil
}

// maxMetadata bounds what is read into memory as a manifest, index or config.
const maxMetadata = 16 << 20

// readBlob reads a small stored blob and checks it still has its digest.
func (s *Store) readBlob(digest string) ([]byte, error) {
	h, err := v1.NewHash(digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(s.blobPath(h))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("image store: blob %s is missing (removed while in use?)", digest)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetadata+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxMetadata {
		return nil, fmt.Errorf("image store: blob %s is larger than %d bytes", digest, maxMetadata)
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(b)); got != h {
		return nil, fmt.Errorf("image store: blob %s is corrupt (content has digest %s)", digest, got)
	}
	return b, nil
}

func (s *Store) manifest(digest string) ([]byte, *v1.Manifest, error) {
	raw, err := s.readBlob(digest)
	if err != nil {
		return nil, nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("image store: manifest %s: %w", digest, err)
	}
	return raw, m, nil
}

func (s *Store) config(m *v1.Manifest) (*v1.ConfigFile, error) {
	raw, err := s.readBlob(m.Config.Digest.String())
	if err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image store: config %s: %w", m.Config.Digest, err)
	}
	return cfg, nil
}

// collect deletes the blobs, root filesystems and leftovers of interrupted
// writes that no reference needs. It runs only if it can take gc.lock
// exclusively at once: an import or unpack holds it shared, so nothing it is
// writing or reading can be collected, and no temporary file is in use.
//
// A root filesystem is deleted with its image: the executor must not let an
// image be removed while a job runs from its root filesystem.
func (s *Store) collect() error {
	unlock, ok, err := tryFlock(s.gcLock(), syscall.LOCK_EX)
	if err != nil || !ok {
		return err
	}
	defer unlock()
	rf, err := s.readRefs()
	if err != nil {
		return err
	}
	keep := map[string]bool{}  // blob hex
	roots := map[string]bool{} // manifest hex
	for _, e := range rf.Refs {
		h, err := v1.NewHash(e.Digest)
		if err != nil {
			continue
		}
		keep[h.Hex], roots[h.Hex] = true, true
		_, m, err := s.manifest(e.Digest)
		if err != nil {
			continue // a broken manifest keeps only itself; its image cannot be used anyway
		}
		keep[m.Config.Digest.Hex] = true
		for _, l := range m.Layers {
			keep[l.Digest.Hex] = true
		}
	}
	var errs []error
	sweep := func(dir string, keepName func(string) bool) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			return
		}
		for _, e := range ents {
			if !keepName(e.Name()) {
				if err := removeTree(filepath.Join(dir, e.Name())); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	sweep(s.blobDir(), func(n string) bool { return keep[n] })
	sweep(s.rootfsDir(), func(n string) bool { return roots[n] })
	sweep(s.lockDir(), func(n string) bool { return roots[strings.TrimSuffix(n, ".lock")] })
	sweep(s.tmpDir(), func(string) bool { return false })
	return errors.Join(errs...)
}

// removeTree is os.RemoveAll that also removes trees holding read-only
// directories (an unpacked image has them) when not running as root.
func removeTree(path string) error {
	if err := os.RemoveAll(path); err == nil {
		return nil
	}
	filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}
