package sagemaker

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// Model data (a model.tar.gz in the object store) is unpacked into the
// directory that instances see as /opt/ml/model. The archive is the user's
// (or a training job's) and is untrusted: it may hold only directories,
// regular files, and links that stay inside the model directory. Every
// write goes through an os.Root, so not even a link created by an earlier
// entry can lead a later one outside.

// errModelData marks an archive convoy refuses, as opposed to a failure to
// read or write it.
var errModelData = errors.New("invalid model data")

// modelEntryName turns a tar entry name into a clean relative path ("."
// for the root). It refuses absolute names, NUL and any ".." component.
func modelEntryName(name string) (string, error) {
	name = strings.TrimPrefix(name, "./")
	switch {
	case name == "" || name == ".":
		return ".", nil
	case strings.HasPrefix(name, "/"):
		return "", fmt.Errorf("%w: entry %q has an absolute path", errModelData, name)
	case strings.ContainsRune(name, 0):
		return "", fmt.Errorf("%w: entry %q has a NUL in its name", errModelData, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: entry %q leaves the model directory (\"..\")", errModelData, name)
		}
	}
	return path.Clean(name), nil
}

// linkInside reports whether a symbolic link at name with target stays in
// the model directory when followed from where it is.
func linkInside(name, target string) bool {
	if target == "" || strings.HasPrefix(target, "/") || strings.ContainsRune(target, 0) {
		return false
	}
	p := path.Join(path.Dir(name), target)
	return p != ".." && !strings.HasPrefix(p, "../")
}

// extractModel unpacks a tar or tar.gz stream into dir, which must exist
// and be empty, writing at most maxBytes of file content.
func extractModel(ctx context.Context, r io.Reader, dir string, maxBytes int64) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	var src io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: %v", errModelData, err)
		}
		defer gz.Close()
		src = gz
	}
	tr := tar.NewReader(src)
	written := int64(0)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: not a tar archive (model data must be a model.tar.gz): %v", errModelData, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		name, err := modelEntryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			continue
		case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
		default:
			return fmt.Errorf("%w: entry %q is of a type model data cannot hold (%q): only directories, files and links are allowed", errModelData, hdr.Name, hdr.Typeflag)
		}
		// A later entry replaces an earlier one of the same name, as tar does.
		if fi, err := root.Lstat(name); err == nil {
			if fi.IsDir() {
				err = root.RemoveAll(name)
			} else {
				err = root.Remove(name)
			}
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
		}
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			if !linkInside(name, hdr.Linkname) {
				return fmt.Errorf("%w: symbolic link %q points outside the model directory (to %q)", errModelData, hdr.Name, hdr.Linkname)
			}
			err = root.Symlink(hdr.Linkname, name)
		case tar.TypeLink:
			var target string
			if target, err = modelEntryName(hdr.Linkname); err == nil {
				err = root.Link(target, name)
			}
		default:
			if hdr.Size > maxBytes-written {
				return fmt.Errorf("%w: the unpacked model is larger than %d bytes", errModelData, maxBytes)
			}
			var n int64
			n, err = writeModelFile(root, name, tr, fs.FileMode(hdr.Mode)&0o755|0o644)
			written += n
		}
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
	}
}

// writeModelFile writes one file, readable by anyone (the image user need
// not be root) and never setuid.
func writeModelFile(root *os.Root, name string, r io.Reader, mode fs.FileMode) (int64, error) {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Chmod(name, mode) // the umask narrowed it
	}
	return n, err
}
