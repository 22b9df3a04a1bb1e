package images

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLI builds the convoy binary and drives `convoy images` as a person
// would: import a docker save archive, list it, remove it.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the convoy binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool")
	}
	bin := filepath.Join(t.TempDir(), "convoy")
	build := exec.Command(goTool, "build", "-o", bin, "convoy/cmd/convoy")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data := t.TempDir()
	archive := dockerArchive(t, helloImage(t), "trainer:1")
	convoy := func(wantOK bool, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+t.TempDir()) // never the real default
		out, err := cmd.CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("convoy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	out := convoy(true, "images", "import", "--data", data, archive, "trainer:1")
	if !strings.Contains(out, "layer 1/1") || !strings.Contains(out, "imported trainer:1 sha256:") {
		t.Errorf("import printed:\n%s", out)
	}
	digest := out[strings.LastIndex(out, "sha256:"):][:71]

	out = convoy(true, "images", "list", "--data", data)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REFERENCE") ||
		!strings.HasPrefix(lines[1], "trainer:1 ") || !strings.Contains(lines[1], digest) || !strings.Contains(lines[1], "2024-05-06 07:08:09") {
		t.Errorf("list printed:\n%s", out)
	}
	if fi, err := os.Stat(filepath.Join(data, "images", "refs.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("refs.json: %v, %v", fi, err)
	}

	out = convoy(false, "images", "import", "--data", data, filepath.Join(t.TempDir(), "missing.tar"), "x:1")
	if !strings.Contains(out, "missing.tar") {
		t.Errorf("import of a missing file printed:\n%s", out)
	}
	if out := convoy(false, "images", "--data", data, "rm", "trainer"); !strings.Contains(out, "not in the image store") {
		t.Errorf("rm of trainer (trainer:latest, not imported) printed:\n%s", out) // --data before the subcommand works too
	}
	convoy(true, "images", "rm", "--data", data, "trainer:1")
	if out := convoy(true, "images", "ls", "--data", data); strings.Contains(out, "trainer") {
		t.Errorf("list after rm printed:\n%s", out)
	}
}
