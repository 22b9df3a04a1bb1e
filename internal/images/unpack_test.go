package images

import (
	"archive/tar"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestUnpackLayers applies a two-layer image: the second layer deletes a
// file, a directory and (opaquely) the lower contents of another, and
// replaces a directory by a file; modes, links, times and owners survive.
func TestUnpackLayers(t *testing.T) {
	s := openStore(t)
	lower := []ent{
		dir("a/"), file("a/keep", "keep"), file("a/gone", "gone"),
		dir("opq/"), file("opq/old1", "old"), dir("opq/sub/"), file("opq/sub/old2", "old"),
		dir("other/"), file("other/x", "x"),
		dir("bin/"), {name: "bin/tool", body: "tool", mode: 0o4755}, hardlink("bin/tool2", "bin/tool"), symlink("bin/link", "tool"),
		{name: "ro/", typ: tar.TypeDir, mode: 0o555}, file("ro/f", "f"),
		{name: "owned", body: "o", mode: 0o640, uid: 1234},
		dir("rep/"), file("rep/child", "c"),
		{name: "pipe", typ: tar.TypeFifo, mode: 0o600},
		{name: "dev/sda", typ: tar.TypeBlock, mode: 0o600},
	}
	upper := []ent{
		file("opq/new", "new"), // before the opaque marker: order within a layer does not matter
		file("opq/.wh..wh..opq", ""),
		file("opq/sub/newer", "newer"), // in a directory this layer did not declare
		file("a/.wh.gone", ""),
		file(".wh.other", ""),
		file("ro/g", "g"), // into a directory that ends up read-only
		file("rep", "now a file"),
		file(".wh..wh.plnk", ""), // AUFS bookkeeping: ignored
	}
	img := importLayers(t, s, "layers:1", lower, upper)
	root := filepath.Join(t.TempDir(), "rootfs")
	t.Cleanup(func() { removeTree(root) }) // ro/ is read-only: t.TempDir cannot remove it when not root
	if err := s.Unpack(t.Context(), img, root); err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if rel, _ := filepath.Rel(root, p); rel != "." {
			got = append(got, filepath.ToSlash(rel))
		}
		return nil
	})
	want := []string{
		"a", "a/keep", "bin", "bin/link", "bin/tool", "bin/tool2", "dev",
		"opq", "opq/new", "opq/sub", "opq/sub/newer", "owned", "pipe", "rep", "ro", "ro/f", "ro/g",
	}
	if !slices.Equal(got, want) {
		t.Errorf("unpacked\n  %v\nwant\n  %v", got, want)
	}

	mode := func(p string) fs.FileMode {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode()
	}
	for p, want := range map[string]fs.FileMode{
		".":        fs.ModeDir | 0o755,
		"bin/tool": fs.ModeSetuid | 0o755,
		"ro":       fs.ModeDir | 0o555,
		"owned":    0o640,
		"pipe":     fs.ModeNamedPipe | 0o600,
		"bin/link": fs.ModeSymlink | 0o777,
		"rep":      0o644,
	} {
		if got := mode(p); got != want {
			t.Errorf("%s has mode %v, want %v", p, got, want)
		}
	}
	if l, _ := os.Readlink(filepath.Join(root, "bin/link")); l != "tool" {
		t.Errorf("bin/link → %q", l)
	}
	a, _ := os.Stat(filepath.Join(root, "bin/tool"))
	b, _ := os.Stat(filepath.Join(root, "bin/tool2"))
	if !os.SameFile(a, b) {
		t.Errorf("bin/tool2 is not a hardlink of bin/tool")
	}
	for _, p := range []string{"a/keep", "ro", "opq"} {
		fi, _ := os.Stat(filepath.Join(root, p))
		if !fi.ModTime().Equal(testTime) {
			t.Errorf("%s has mtime %v, want %v", p, fi.ModTime(), testTime)
		}
	}
	if os.Geteuid() == 0 {
		fi, _ := os.Stat(filepath.Join(root, "owned"))
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 1234 || st.Gid != 1234 {
			t.Errorf("owned belongs to %d:%d, want 1234:1234", st.Uid, st.Gid)
		}
	}

	if err := s.Unpack(t.Context(), img, root); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Unpack into a non-empty directory: %v", err)
	}
}

// TestUnpackRefusesEscape: no layer can write, link or delete outside the
// directory it is unpacked into.
func TestUnpackRefusesEscape(t *testing.T) {
	tests := []struct {
		name    string
		layers  func(outside string) [][]ent
		wantErr bool
	}{
		{"dotdot", func(string) [][]ent { return [][]ent{{file("../evil", "x")}} }, true},
		{"dotdot inside a path", func(string) [][]ent { return [][]ent{{dir("a/"), file("a/../../evil", "x")}} }, true},
		{"absolute path", func(o string) [][]ent { return [][]ent{{file(o+"/evil", "x")}} }, true},
		{"symlink then write", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside"), file("esc/evil", "x")}}
		}, true},
		{"absolute symlink then write", func(o string) [][]ent {
			return [][]ent{{symlink("esc", o), file("esc/evil", "x")}}
		}, true},
		{"symlink then write in the next layer", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside")}, {file("esc/evil", "x")}}
		}, true},
		{"symlink chain", func(string) [][]ent {
			return [][]ent{{symlink("a", "b"), symlink("b", "../outside"), file("a/evil", "x")}}
		}, true},
		{"mkdir through symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside"), dir("esc/sub/")}}
		}, true},
		{"overwrite through symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside"), file("esc/victim", "pwned")}}
		}, true},
		{"hardlink to outside", func(string) [][]ent { return [][]ent{{hardlink("h", "../outside/victim")}} }, true},
		{"hardlink to absolute", func(o string) [][]ent { return [][]ent{{hardlink("h", o+"/victim")}} }, true},
		{"hardlink through symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside"), hardlink("h", "esc/victim")}}
		}, true},
		{"whiteout through symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside")}, {file("esc/.wh.victim", "")}}
		}, true},
		{"opaque whiteout below a symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside")}, {file("esc/sub/.wh..wh..opq", "")}}
		}, true},
		{"whiteout of ..", func(string) [][]ent { return [][]ent{{dir("a/"), file("a/.wh...", "")}} }, true},
		{"whiteout of .", func(string) [][]ent { return [][]ent{{dir("a/"), file("a/.wh..", "")}} }, true},

		// Harmless: a symlink as the last component is replaced, not followed.
		{"file replaces symlink", func(o string) [][]ent {
			return [][]ent{{symlink("f", o+"/victim")}, {file("f", "pwned")}}
		}, false},
		{"dir replaces symlink", func(string) [][]ent {
			return [][]ent{{symlink("d", "../outside"), dir("d/"), file("d/victim", "pwned")}}
		}, false},
		{"opaque whiteout on a symlink", func(string) [][]ent {
			return [][]ent{{symlink("esc", "../outside")}, {file("esc/.wh..wh..opq", "")}}
		}, false},
		{"symlinks may point anywhere", func(o string) [][]ent {
			return [][]ent{{symlink("abs", o+"/victim"), symlink("rel", "../../../../outside/victim")}}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			os.Mkdir(outside, 0o700)
			victim := filepath.Join(outside, "victim")
			os.WriteFile(victim, []byte("original"), 0o600)
			root := filepath.Join(base, "rootfs")

			s := openStore(t)
			img := importLayers(t, s, "evil:1", tt.layers(outside)...)
			err := s.Unpack(t.Context(), img, root)
			if tt.wantErr && err == nil {
				t.Errorf("Unpack succeeded")
			}
			if !tt.wantErr && err != nil {
				t.Errorf("Unpack: %v", err)
			}
			t.Logf("Unpack: %v", err)

			if b, err := os.ReadFile(victim); err != nil || string(b) != "original" {
				t.Errorf("victim outside: %q, %v", b, err)
			}
			for dir, want := range map[string][]string{base: {"outside", "rootfs"}, outside: {"victim"}} {
				ents, _ := os.ReadDir(dir)
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				if tt.wantErr && dir == base {
					want = []string{"outside"} // a failed unpack removes what it made
				}
				if !slices.Equal(names, want) {
					t.Errorf("%s holds %v, want %v", dir, names, want)
				}
			}
		})
	}
}

// FuzzSafeJoin checks the tar entry name sanitiser: whatever name a layer
// holds, joining what safeRel accepts onto the unpack root names the root or
// something beneath it, never a path outside.
func FuzzSafeJoin(f *testing.F) {
	for _, s := range []string{
		"a", "./a", "a/b/", "../evil", "a/../../evil", "/etc/passwd", "./", ".", "", "a//b",
		".wh..", ".wh...", "a/.wh..wh..opq", "..", "...", "a/..", "..a", "a/..b", "\x00", "./../a",
	} {
		f.Add(s)
	}
	const root = "/unpack/root"
	f.Fuzz(func(t *testing.T, name string) {
		rel, err := safeRel(name)
		if err != nil {
			return
		}
		if rel != "." && !filepath.IsLocal(rel) {
			t.Fatalf("safeRel(%q) = %q, not local", name, rel)
		}
		for _, part := range strings.Split(rel, "/") {
			if part == ".." || part == "" {
				t.Fatalf("safeRel(%q) = %q has a %q component", name, rel, part)
			}
		}
		joined := filepath.Join(root, rel)
		if joined != root && !strings.HasPrefix(joined, root+"/") {
			t.Fatalf("safeRel(%q) = %q joins to %q, outside %s", name, rel, joined, root)
		}
		if again, err := safeRel(rel); err != nil || again != rel {
			t.Fatalf("safeRel is not idempotent on %q: %q, %v", rel, again, err)
		}
	})
}

// TestImplicitDirs: a directory a layer creates without declaring it is
// 0755 whatever the umask, so a non-root user in the container can enter it.
func TestImplicitDirs(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	s := openStore(t)
	img := importLayers(t, s, "implicit:1", []ent{file("usr/local/bin/tool", "x")})
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := s.Unpack(t.Context(), img, root); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{".", "usr", "usr/local", "usr/local/bin"} {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil || fi.Mode() != fs.ModeDir|0o755 {
			t.Errorf("%s: %v, %v; want a 0755 directory", p, fi.Mode(), err)
		}
	}
}
