package sagemaker

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tarEntry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func makeTar(t testing.TB, gz bool, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w *tar.Writer
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = tar.NewWriter(zw)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o600
		}
		hdr := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: typ, Mode: mode, Size: int64(len(e.body))}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := w.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			w.Write([]byte(e.body))
		}
	}
	w.Close()
	if zw != nil {
		zw.Close()
	}
	return buf.Bytes()
}

func TestExtractModel(t *testing.T) {
	dir := t.TempDir()
	data := makeTar(t, true,
		tarEntry{name: "./", typ: tar.TypeDir, mode: 0o700},
		tarEntry{name: "model.txt", body: "weights"},
		tarEntry{name: "sub/deep/x.bin", body: "x", mode: 0o4755},
		tarEntry{name: "code", typ: tar.TypeDir},
		tarEntry{name: "code/inference.py", body: "print(1)"},
		tarEntry{name: "latest", typ: tar.TypeSymlink, link: "sub/deep"},
		tarEntry{name: "sub/up", typ: tar.TypeSymlink, link: "../model.txt"},
		tarEntry{name: "copy.txt", typ: tar.TypeLink, link: "model.txt"},
		tarEntry{name: "model.txt", body: "weights v2"}, // a later entry wins
	)
	if err := extractModel(context.Background(), bytes.NewReader(data), dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"model.txt": "weights v2", "sub/deep/x.bin": "x", "code/inference.py": "print(1)",
		"latest/x.bin": "x", "sub/up": "weights v2", "copy.txt": "weights",
	} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", name, b, err, want)
		}
	}
	fi, err := os.Stat(filepath.Join(dir, "sub/deep/x.bin"))
	if err != nil || fi.Mode()&os.ModeSetuid != 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("x.bin mode %v %v: want 0755 without setuid", fi.Mode(), err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "model.txt")); fi.Mode().Perm() != 0o644 {
		t.Errorf("a 0600 file must become readable by the image user: %v", fi.Mode())
	}

	// Plain tar works as well.
	dir2 := t.TempDir()
	if err := extractModel(context.Background(), bytes.NewReader(makeTar(t, false, tarEntry{name: "m", body: "1"})), dir2, 10); err != nil {
		t.Fatal(err)
	}
}

func TestExtractModelRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		raw     []byte
		want    string
	}{
		{name: "dotdot", entries: []tarEntry{{name: "../escape", body: "x"}}, want: `leaves the model directory`},
		{name: "dotdot inside", entries: []tarEntry{{name: "a/../../escape", body: "x"}}, want: `leaves the model directory`},
		{name: "absolute", entries: []tarEntry{{name: "/etc/cron.d/x", body: "x"}}, want: "absolute path"},
		{name: "absolute symlink", entries: []tarEntry{{name: "l", typ: tar.TypeSymlink, link: "/etc"}}, want: "points outside"},
		{name: "relative symlink out", entries: []tarEntry{{name: "a/l", typ: tar.TypeSymlink, link: "../../etc"}}, want: "points outside"},
		{name: "hardlink out", entries: []tarEntry{{name: "l", typ: tar.TypeLink, link: "../etc/passwd"}}, want: "leaves the model directory"},
		{name: "device", entries: []tarEntry{{name: "null", typ: tar.TypeChar}}, want: "cannot hold"},
		{name: "fifo", entries: []tarEntry{{name: "p", typ: tar.TypeFifo}}, want: "cannot hold"},
		{name: "too large", entries: []tarEntry{{name: "a", body: strings.Repeat("x", 600)}, {name: "b", body: strings.Repeat("x", 600)}}, want: "larger than 1000 bytes"},
		{name: "not a tar", raw: []byte("this is not an archive at all, not even close, but long enough to look at"), want: "not a tar archive"},
		{name: "bad gzip", raw: []byte{0x1f, 0x8b, 0, 0}, want: "invalid model data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "model")
			os.Mkdir(dir, 0o755)
			data := tc.raw
			if data == nil {
				data = makeTar(t, true, tc.entries...)
			}
			err := extractModel(context.Background(), bytes.NewReader(data), dir, 1000)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if !errors.Is(err, errModelData) && tc.name != "hardlink out" {
				t.Errorf("err %v is not marked as invalid model data", err)
			}
			entries, _ := os.ReadDir(parent)
			if len(entries) != 1 {
				t.Errorf("something was written beside the model directory: %v", entries)
			}
		})
	}
}

// A symbolic link that stays inside but points at a directory cannot be
// used by a later entry to write outside, even through a chain of links.
func TestExtractModelLinkChain(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "model")
	os.Mkdir(dir, 0o755)
	data := makeTar(t, false,
		tarEntry{name: "a", typ: tar.TypeDir},
		tarEntry{name: "a/b", typ: tar.TypeSymlink, link: ".."},
		tarEntry{name: "a/b/c", typ: tar.TypeSymlink, link: ".."}, // resolves to parent/ if followed from the host
		tarEntry{name: "a/b/c/escape", body: "x"},
	)
	err := extractModel(context.Background(), bytes.NewReader(data), dir, 1000)
	if _, serr := os.Stat(filepath.Join(parent, "escape")); serr == nil {
		t.Fatalf("a file was written outside the model directory (err %v)", err)
	}
	if err == nil {
		t.Fatal("a link chain out of the model directory was accepted")
	}
}

func FuzzExtractModel(f *testing.F) {
	f.Add(makeTar(f, true, tarEntry{name: "m.txt", body: "w"}, tarEntry{name: "l", typ: tar.TypeSymlink, link: "m.txt"}))
	f.Add(makeTar(f, false, tarEntry{name: "a/b", typ: tar.TypeSymlink, link: ".."}, tarEntry{name: "a/b/x", body: "x"}))
	f.Add([]byte{0x1f, 0x8b})
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "model")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		extractModel(context.Background(), bytes.NewReader(data), dir, 1<<16)
		entries, _ := os.ReadDir(parent)
		if len(entries) != 1 {
			t.Fatalf("wrote outside the model directory: %v", entries)
		}
	})
}
