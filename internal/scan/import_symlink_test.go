package scan

import (
	"os"
	"path/filepath"
	"testing"
)

// A directory given to `convoy vulndb import` may hold symlinks (an
// unpacked archive from elsewhere): neither a .json symlink to a file
// outside nor a symlinked subdirectory is read.
func TestImportDirDoesNotFollowSymlinks(t *testing.T) {
	outside := t.TempDir()
	rec := `{"id":"OUT-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"x"},"versions":["1"]}]}`
	if err := os.WriteFile(filepath.Join(outside, "r.json"), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	in := t.TempDir()
	ok := `{"id":"IN-1","modified":"2024-01-01T00:00:00Z","affected":[{"package":{"ecosystem":"PyPI","name":"y"},"versions":["1"]}]}`
	os.WriteFile(filepath.Join(in, "in.json"), []byte(ok), 0o600)
	if err := os.Symlink(filepath.Join(outside, "r.json"), filepath.Join(in, "link.json")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(in, "sub")); err != nil {
		t.Fatal(err)
	}
	res, err := Import(t.TempDir(), in)
	if err != nil {
		t.Fatal(err)
	}
	if _, found := res.DB.Vulns["OUT-1"]; found || res.Imported != 1 {
		t.Fatalf("import followed a symlink out of the directory: imported %d, records %v", res.Imported, res.DB.Vulns)
	}
}
