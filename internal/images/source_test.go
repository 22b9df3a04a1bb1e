package images

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTarSource reads files out of a tar in place, through long (PAX) names,
// "./" prefixes, symlinks and hardlinks, as the layouts and archives in the
// wild have them.
func TestTarSource(t *testing.T) {
	long := strings.Repeat("d", 120) + "/" + strings.Repeat("f", 90)
	p := filepath.Join(t.TempDir(), "src.tar")
	err := os.WriteFile(p, tarBytes(t,
		dir("./blobs/"),
		file("./blobs/a", "content a"),
		file(long, "content long"),
		ent{name: "empty", typ: tar.TypeReg},
		symlink("sub/link", "../blobs/a"),
		hardlink("hard", "./blobs/a"),
		symlink("loop", "loop"),
		symlink("escape", "../../etc/passwd"),
	), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	src, err := openSource(p)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for name, want := range map[string]string{
		"blobs/a": "content a", "./blobs/a": "content a", long: "content long", "empty": "",
		"sub/link": "content a", "hard": "content a",
	} {
		rc, n, err := src.open(name)
		if err != nil {
			t.Errorf("open %s: %v", name, err)
			continue
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if string(b) != want || n != int64(len(want)) {
			t.Errorf("%s = %q (%d bytes), want %q", name, b, n, want)
		}
	}
	for _, name := range []string{"blobs", "missing", "loop", "escape", "../src.tar"} {
		if src.has(name) {
			t.Errorf("has(%q) = true", name)
		}
	}
}
