package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"convoy/internal/fsutil"
)

// Import reads an image from file and stores it under ref (NAME[:TAG]; the
// tag defaults to latest). file is a `docker save` archive or an OCI image
// layout, as a tar file or a directory; which one is told by its content
// (index.json means an OCI layout, which `docker save` also writes since
// Docker 25; otherwise manifest.json means a docker-archive). Every blob's
// digest is checked while it is written, and nothing is referenced until all
// of an image's blobs are stored. Progress lines go to progress (may be nil).
//
// From an OCI layout holding several images, the one whose name annotation
// matches ref is taken, else the one for this machine's platform. A
// docker-archive's layers are stored uncompressed, checked against the
// config's diff_ids, under a manifest written here; an OCI layout's blobs and
// manifest are stored as they are, so the image keeps its registry digest.
func (s *Store) Import(ctx context.Context, file, ref string, progress io.Writer) (Image, error) {
	if progress == nil {
		progress = io.Discard
	}
	r, err := parseReference(ref)
	if err != nil {
		return Image{}, err
	}
	if r.digest != "" {
		return Image{}, fmt.Errorf("import as %q: name the image NAME:TAG; its digest comes from its content", ref)
	}
	src, err := openSource(file)
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", file, err)
	}
	defer src.Close()

	// Hold gc.lock shared until the reference is written, so that a
	// concurrent Remove cannot collect blobs that are stored but not yet referenced.
	unlock, err := flock(ctx, s.gcLock(), syscall.LOCK_SH)
	if err != nil {
		return Image{}, err
	}
	defer unlock()

	im := &importer{s: s, ctx: ctx, src: src, ref: r, out: progress}
	var digest v1.Hash
	switch {
	case src.has("index.json"):
		fmt.Fprintf(progress, "importing %s (OCI image layout) as %s\n", file, r.Familiar())
		digest, err = im.fromLayout()
	case src.has("manifest.json"):
		fmt.Fprintf(progress, "importing %s (docker-archive) as %s\n", file, r.Familiar())
		digest, err = im.fromDockerArchive()
	default:
		err = errors.New("neither an OCI image layout (index.json) nor a docker-archive (manifest.json)")
	}
	if err != nil {
		return Image{}, fmt.Errorf("import %s: %w", file, err)
	}

	var replaced bool
	err = s.updateRefs(ctx, func(rf *refsFile) error {
		old, ok := rf.Refs[r.String()]
		replaced = ok && old.Digest != digest.String()
		rf.Refs[r.String()] = refEntry{Digest: digest.String(), Imported: time.Now().UTC()}
		return nil
	})
	if err != nil {
		return Image{}, err
	}
	img, err := s.load(r.String(), digest.String())
	if err != nil {
		return Image{}, err
	}
	fmt.Fprintf(progress, "imported %s %s (%s, %s)\n", img.Ref, img.Digest, plural(im.layers, "layer"), formatSize(img.Size))
	if replaced {
		unlock() // collect needs gc.lock exclusively
		if err := s.collect(); err != nil {
			fmt.Fprintf(progress, "warning: collecting the replaced image's blobs: %v\n", err)
		}
	}
	return img, nil
}

type importer struct {
	s      *Store
	ctx    context.Context
	src    source
	ref    reference
	out    io.Writer
	layers int
}

// candidate is an image manifest found in an OCI layout's index.
type candidate struct {
	desc     v1.Descriptor
	raw      []byte   // the manifest, checked against desc
	names    []string // reference annotations, from it and the indexes above it
	platform *v1.Platform
}

func (im *importer) fromLayout() (v1.Hash, error) {
	var cands []candidate
	var walk func(raw []byte, names []string, depth int) error
	walk = func(raw []byte, names []string, depth int) error {
		idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("image index: %w", err)
		}
		for _, d := range idx.Manifests {
			if d.Annotations["vnd.docker.reference.type"] != "" {
				continue // an attestation or signature, not an image to run
			}
			if d.Platform != nil && d.Platform.OS == "unknown" {
				continue
			}
			if !im.src.has(blobName(d.Digest)) {
				continue // another platform's image, left out of the layout
			}
			ns := names
			for _, k := range []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"} {
				if v := d.Annotations[k]; v != "" {
					ns = append(slices.Clone(ns), v)
				}
			}
			raw, err := im.readVerified(d)
			if err != nil {
				return err
			}
			switch mt := kindOf(d.MediaType, raw); {
			case mt.IsIndex() && depth < 4:
				if err := walk(raw, ns, depth+1); err != nil {
					return err
				}
			case mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2:
				cands = append(cands, candidate{desc: d, raw: raw, names: ns, platform: d.Platform})
			}
		}
		return nil
	}
	idx, err := readSmall(im.src, "index.json")
	if err != nil {
		return v1.Hash{}, err
	}
	if err := walk(idx, nil, 0); err != nil {
		return v1.Hash{}, err
	}
	c, err := im.choose(cands)
	if err != nil {
		return v1.Hash{}, err
	}
	raw := c.raw
	m, err := v1.ParseManifest(bytes.NewReader(raw))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("manifest %s: %w", c.desc.Digest, err)
	}
	if !m.Config.MediaType.IsConfig() && m.Config.MediaType != "" {
		return v1.Hash{}, fmt.Errorf("manifest %s is not a container image (config type %s)", c.desc.Digest, m.Config.MediaType)
	}
	cfg, err := im.copyConfig(m.Config.Digest, m.Config.Size, blobName(m.Config.Digest))
	if err != nil {
		return v1.Hash{}, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return v1.Hash{}, fmt.Errorf("manifest %s has %d layers, its config %d diff_ids", c.desc.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	for i, l := range m.Layers {
		if !im.src.has(blobName(l.Digest)) && !l.MediaType.IsDistributable() {
			return v1.Hash{}, fmt.Errorf("layer %s is a non-distributable layer the layout does not include", l.Digest)
		}
		n, existed, err := im.copyBlob(blobName(l.Digest), l.Digest, l.Size, false)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("layer %d: %w", i+1, err)
		}
		im.progress("layer", i+1, len(m.Layers), l.Digest, n, existed)
	}
	im.layers = len(m.Layers)
	if _, _, err := im.s.writeBlob(im.ctx, bytes.NewReader(raw), c.desc.Digest, int64(len(raw))); err != nil {
		return v1.Hash{}, fmt.Errorf("manifest: %w", err)
	}
	return c.desc.Digest, nil
}

// readVerified reads the manifest or index d describes and checks its digest and size.
func (im *importer) readVerified(d v1.Descriptor) ([]byte, error) {
	raw, err := readSmall(im.src, blobName(d.Digest))
	if err != nil {
		return nil, err
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(raw)); got != d.Digest || int64(len(raw)) != d.Size {
		return nil, fmt.Errorf("%s: digest mismatch: content has digest %s (%d bytes, want %d)", d.Digest, got, len(raw), d.Size)
	}
	return raw, nil
}

// kindOf is a descriptor's media type, or, for the writers that leave it
// out, the one the manifest or index itself gives or implies.
func kindOf(mt types.MediaType, raw []byte) types.MediaType {
	if mt != "" {
		return mt
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Config    json.RawMessage `json:"config"`
	}
	json.Unmarshal(raw, &probe)
	switch {
	case probe.MediaType != "":
		return probe.MediaType
	case probe.Manifests != nil:
		return types.OCIImageIndex
	case probe.Config != nil:
		return types.OCIManifestSchema1
	}
	return ""
}

// choose picks the image to import from a layout: the only one, else those
// named like the reference, else those for this machine's platform.
func (im *importer) choose(cands []candidate) (candidate, error) {
	if len(cands) == 0 {
		return candidate{}, errors.New("the layout holds no image manifest (Docker v2 or OCI) whose blobs it includes")
	}
	filter := func(keep func(candidate) bool) {
		var out []candidate
		for _, c := range cands {
			if keep(c) {
				out = append(out, c)
			}
		}
		if len(out) > 0 {
			cands = out
		}
	}
	if len(cands) > 1 {
		filter(func(c candidate) bool {
			for _, n := range c.names {
				if n == im.ref.tag {
					return true
				}
				if r, err := parseReference(n); err == nil && r.String() == im.ref.String() {
					return true
				}
			}
			return false
		})
	}
	if len(cands) > 1 {
		filter(func(c candidate) bool {
			return c.platform != nil && c.platform.OS == "linux" && c.platform.Architecture == runtime.GOARCH
		})
	}
	if len(cands) > 1 {
		var list []string
		for _, c := range cands {
			list = append(list, fmt.Sprintf("%s %v %s", c.desc.Digest, c.names, c.platform))
		}
		return candidate{}, fmt.Errorf("the layout holds %d images and none is named %s or alone for linux/%s: %s",
			len(cands), im.ref.Familiar(), runtime.GOARCH, strings.Join(list, "; "))
	}
	return cands[0], nil
}

func (im *importer) fromDockerArchive() (v1.Hash, error) {
	raw, err := readSmall(im.src, "manifest.json")
	if err != nil {
		return v1.Hash{}, err
	}
	var manifest tarball.Manifest
	if err := json.Unmarshal(raw, &manifest); err != nil {
		return v1.Hash{}, fmt.Errorf("manifest.json: %w", err)
	}
	d, err := im.chooseDocker(manifest)
	if err != nil {
		return v1.Hash{}, err
	}

	// The config's name is its digest in every writer we know (<hex>.json,
	// sha256:<hex>, blobs/sha256/<hex>); check it when it is one.
	cfgRaw, err := readSmall(im.src, d.Config)
	if err != nil {
		return v1.Hash{}, err
	}
	cfgDigest, _, _ := v1.SHA256(bytes.NewReader(cfgRaw))
	if want := digestInName.FindStringSubmatch(path.Base(d.Config)); want != nil && want[1] != cfgDigest.Hex {
		return v1.Hash{}, fmt.Errorf("config %s: digest mismatch: its content has digest %s", d.Config, cfgDigest)
	}
	cfg, err := im.storeConfig(cfgRaw, cfgDigest)
	if err != nil {
		return v1.Hash{}, err
	}
	if len(cfg.RootFS.DiffIDs) != len(d.Layers) {
		return v1.Hash{}, fmt.Errorf("manifest.json lists %d layers, the config %d diff_ids", len(d.Layers), len(cfg.RootFS.DiffIDs))
	}

	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Digest: cfgDigest, Size: int64(len(cfgRaw))},
	}
	for i, name := range d.Layers {
		// Stored uncompressed, named by the diff_id the config gives: the
		// hash of the uncompressed content is checked against the config,
		// whatever compression the archive used.
		diffID := cfg.RootFS.DiffIDs[i]
		n, existed, err := im.copyBlob(name, diffID, -1, true)
		if err != nil {
			return v1.Hash{}, fmt.Errorf("layer %d (%s): %w", i+1, name, err)
		}
		im.progress("layer", i+1, len(d.Layers), diffID, n, existed)
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCIUncompressedLayer, Digest: diffID, Size: n})
	}
	im.layers = len(d.Layers)
	mRaw, err := json.Marshal(m)
	if err != nil {
		return v1.Hash{}, err
	}
	mDigest, _, _ := v1.SHA256(bytes.NewReader(mRaw))
	if _, _, err := im.s.writeBlob(im.ctx, bytes.NewReader(mRaw), mDigest, int64(len(mRaw))); err != nil {
		return v1.Hash{}, fmt.Errorf("manifest: %w", err)
	}
	return mDigest, nil
}

var digestInName = regexp.MustCompile(`^(?:sha256:)?([0-9a-f]{64})(?:\.json)?$`)

func (im *importer) chooseDocker(m tarball.Manifest) (tarball.Descriptor, error) {
	switch len(m) {
	case 0:
		return tarball.Descriptor{}, errors.New("manifest.json lists no image")
	case 1:
		return m[0], nil
	}
	var tags []string
	for _, d := range m {
		for _, t := range d.RepoTags {
			if r, err := parseReference(t); err == nil && r.String() == im.ref.String() {
				return d, nil
			}
			tags = append(tags, t)
		}
	}
	return tarball.Descriptor{}, fmt.Errorf("the archive holds %d images and none is tagged %s (its tags: %s); import it under one of its tags",
		len(m), im.ref.Familiar(), strings.Join(tags, ", "))
}

// copyConfig stores and parses an OCI layout's config blob.
func (im *importer) copyConfig(digest v1.Hash, size int64, name string) (*v1.ConfigFile, error) {
	if size > maxMetadata {
		return nil, fmt.Errorf("config %s is %d bytes, more than %d", digest, size, maxMetadata)
	}
	raw, err := readSmall(im.src, name)
	if err != nil {
		return nil, err
	}
	if got, _, _ := v1.SHA256(bytes.NewReader(raw)); got != digest || int64(len(raw)) != size {
		return nil, fmt.Errorf("config %s: digest mismatch: content has digest %s (%d bytes, want %d)", digest, got, len(raw), size)
	}
	return im.storeConfig(raw, digest)
}

func (im *importer) storeConfig(raw []byte, digest v1.Hash) (*v1.ConfigFile, error) {
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", digest, err)
	}
	if cfg.OS != "" && cfg.OS != "linux" {
		return nil, fmt.Errorf("image is for %s; convoy runs linux images", cfg.OS)
	}
	if cfg.Architecture != "" && cfg.Architecture != runtime.GOARCH {
		fmt.Fprintf(im.out, "warning: image is for %s, this machine is %s\n", cfg.Architecture, runtime.GOARCH)
	}
	n, existed, err := im.s.writeBlob(im.ctx, bytes.NewReader(raw), digest, int64(len(raw)))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	im.progress("config", 0, 0, digest, n, existed)
	return cfg, nil
}

// copyBlob stores the source file name as the blob want. With uncompress,
// the file may be gzip or zstd compressed and want is the digest of its
// uncompressed content.
func (im *importer) copyBlob(name string, want v1.Hash, size int64, uncompress bool) (int64, bool, error) {
	if fi, err := os.Stat(im.s.blobPath(want)); err == nil && want.Algorithm == "sha256" {
		return fi.Size(), true, nil // already stored, and checked when it was
	}
	rc, n, err := im.src.open(name)
	if err != nil {
		return 0, false, err
	}
	defer rc.Close()
	var r io.Reader = rc
	if uncompress {
		l, err := partial.CompressedToLayer(sourceLayer{rc: rc, size: n})
		if err != nil {
			return 0, false, err
		}
		u, err := l.Uncompressed()
		if err != nil {
			return 0, false, fmt.Errorf("decompress: %w", err)
		}
		defer u.Close()
		budget, err := diskBudget(im.s.tmpDir())
		if err != nil {
			return 0, false, err
		}
		r = &budgetReader{r: u, left: budget}
	} else if size >= 0 && n != size {
		return 0, false, fmt.Errorf("blob %s: size mismatch: the file has %d bytes, the manifest says %d", want, n, size)
	}
	return im.s.writeBlob(im.ctx, r, want, size)
}

func (im *importer) progress(what string, i, n int, d v1.Hash, size int64, existed bool) {
	state := "stored"
	if existed {
		state = "already stored"
	}
	if n > 0 {
		what = fmt.Sprintf("%s %d/%d", what, i, n)
	}
	fmt.Fprintf(im.out, "  %s %s %s %s\n", what, d, formatSize(size), state)
}

func blobName(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

// sourceLayer adapts a compressed-or-not stream to partial.CompressedLayer,
// whose Uncompressed detects gzip and zstd by their magic numbers.
type sourceLayer struct {
	rc   io.ReadCloser
	size int64
}

func (l sourceLayer) Digest() (v1.Hash, error)           { return v1.Hash{}, errors.New("not computed") }
func (l sourceLayer) Compressed() (io.ReadCloser, error) { return l.rc, nil }
func (l sourceLayer) Size() (int64, error)               { return l.size, nil }
func (l sourceLayer) MediaType() (types.MediaType, error) {
	return types.OCILayer, nil
}

// writeBlob stores r as the blob want: into a temporary file, hashing as it
// goes; if the content's digest (and size, when size >= 0) is what was
// promised, the file is synced and renamed into place. A blob that is already
// stored is not written again. It returns the blob's size.
func (s *Store) writeBlob(ctx context.Context, r io.Reader, want v1.Hash, size int64) (int64, bool, error) {
	if want.Algorithm != "sha256" {
		return 0, false, fmt.Errorf("blob %s: only sha256 digests are supported", want)
	}
	final := s.blobPath(want)
	if fi, err := os.Stat(final); err == nil {
		return fi.Size(), true, nil
	}
	f, err := os.CreateTemp(s.tmpDir(), "blob-*")
	if err != nil {
		return 0, false, err
	}
	defer os.Remove(f.Name()) // no-op after the rename
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, r})
	if err != nil {
		return 0, false, fmt.Errorf("blob %s: %w", want, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return 0, false, fmt.Errorf("blob %s: digest mismatch: the content has digest sha256:%s (corrupt or tampered file)", want, got)
	}
	if size >= 0 && n != size {
		return 0, false, fmt.Errorf("blob %s: size mismatch: %d bytes, want %d", want, n, size)
	}
	if err := f.Sync(); err != nil {
		return 0, false, err
	}
	if err := f.Close(); err != nil {
		return 0, false, err
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return 0, false, err
	}
	return n, false, fsutil.SyncDir(s.blobDir())
}

// ctxReader stops a long copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
