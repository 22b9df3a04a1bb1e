package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"convoy/internal/images/imagetest"
)

// GoImage builds the Go main package pkg (a path go build understands,
// relative to the test's directory) as a static binary and writes an OCI
// image layout holding only that binary as /name, with ENTRYPOINT
// ["/name"], for `convoy images import`. It returns the layout directory.
func GoImage(t testing.TB, pkg, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return imagetest.Layout(t, []imagetest.File{{Name: name, Mode: 0o755, Content: prog}},
		v1.Config{Entrypoint: []string{"/" + name}, Cmd: []string{"serve"}, Env: []string{"PATH=/"}})
}
