package images

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
)

// source is the file an image is imported from: a tar file or a directory,
// holding a docker-archive or an OCI image layout. Names are slash-separated
// and relative to its root.
type source interface {
	// open returns the content of the named regular file and its size.
	open(name string) (io.ReadCloser, int64, error)
	has(name string) bool
	Close() error
}

// openSource opens file as a directory or as an uncompressed tar file.
func openSource(file string) (source, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		root, err := os.OpenRoot(file)
		if err != nil {
			return nil, err
		}
		return dirSource{root}, nil
	}
	return openTarSource(file)
}

// dirSource reads an unpacked layout. os.Root keeps every read inside it,
// whatever symlinks the directory holds.
type dirSource struct{ root *os.Root }

func (d dirSource) open(name string) (io.ReadCloser, int64, error) {
	f, err := d.root.Open(name)
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", name)
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

func (d dirSource) has(name string) bool {
	fi, err := d.root.Stat(name)
	return err == nil && fi.Mode().IsRegular()
}

func (d dirSource) Close() error { return d.root.Close() }

// tarSource reads a tar file in place: one pass over its headers records
// where each file's content starts, and open returns a section of the file.
// A layout in a tar is read without unpacking it first.
type tarSource struct {
	f       *os.File
	entries map[string]tarEntry
}

type tarEntry struct {
	offset, size int64
	link         string // symlink or hardlink target, as a clean archive path
}

func openTarSource(file string) (*tarSource, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	magic, _ := bufio.NewReader(f).Peek(4)
	if len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		f.Close()
		return nil, fmt.Errorf("%s is gzip-compressed: decompress it first (gunzip), or import the directory of an OCI layout", file)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	t := &tarSource{f: f, entries: map[string]tarEntry{}}
	tr := tar.NewReader(f) // *os.File is an io.Seeker: tar skips content by seeking
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s is not a tar file, an OCI layout directory or a docker-archive: %w", file, err)
		}
		name, err := safeRel(hdr.Name)
		if err != nil {
			continue // never looked up: the names a format uses are all clean
		}
		switch hdr.Typeflag {
		case tar.TypeReg:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				f.Close()
				return nil, err
			}
			t.entries[name] = tarEntry{offset: off, size: hdr.Size}
		case tar.TypeSymlink:
			// `docker save` links a layer shared by two images: 2/layer.tar → ../1/layer.tar.
			t.entries[name] = tarEntry{link: path.Join(path.Dir(name), hdr.Linkname)}
		case tar.TypeLink:
			t.entries[name] = tarEntry{link: path.Clean(hdr.Linkname)}
		}
	}
	if len(t.entries) == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is not a tar file, an OCI layout directory or a docker-archive", file)
	}
	return t, nil
}

func (t *tarSource) lookup(name string) (tarEntry, error) {
	name = path.Clean(name)
	for range 16 {
		e, ok := t.entries[name]
		if !ok {
			return tarEntry{}, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		if e.link == "" {
			return e, nil
		}
		name = e.link
	}
	return tarEntry{}, fmt.Errorf("open %s: too many links", name)
}

func (t *tarSource) open(name string) (io.ReadCloser, int64, error) {
	e, err := t.lookup(name)
	if err != nil {
		return nil, 0, err
	}
	return io.NopCloser(io.NewSectionReader(t.f, e.offset, e.size)), e.size, nil
}

func (t *tarSource) has(name string) bool {
	_, err := t.lookup(name)
	return err == nil
}

func (t *tarSource) Close() error { return t.f.Close() }

// readSmall reads a metadata file (manifest, index, config) of at most maxMetadata bytes.
func readSmall(src source, name string) ([]byte, error) {
	rc, size, err := src.open(name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > maxMetadata {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d a manifest or config may have", name, size, maxMetadata)
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxMetadata+1))
	if err == nil && len(b) > maxMetadata {
		err = errors.New("too large")
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return b, nil
}
