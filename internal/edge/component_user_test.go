package edge

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Components never run as a user who may write the core's data directory:
// such a component could read the core's keys, or swap DATA/logs for a
// directory of its own holding <component>.log -> /etc/passwd, and the root
// core would append a component's output there. So deployments need a
// dedicated --component-uid (no default), Check refuses DATA's owner, and
// a log is never opened through a symbolic link.
func TestComponentUserCannotWriteData(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the data directory is chowned to another user")
	}
	const owner = 23456 // an ordinary user who owns DATA
	data := filepath.Join(t.TempDir(), "edge")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(data, owner, owner); err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sock := filepath.Join(data, "ipc.sock")

	if _, err := newDeployer(Options{DataDir: data, ComponentUID: -1, ComponentGID: -1, Logger: quiet}, nil, "core1", sock); err == nil ||
		!strings.Contains(err.Error(), "--component-uid") {
		t.Errorf("deployments without --component-uid: %v, want a refusal naming the flag", err)
	}

	d, err := newDeployer(Options{DataDir: data, ComponentUID: owner, ComponentGID: owner, Logger: quiet}, nil, "core1", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Check(); err == nil || !strings.Contains(err.Error(), "may write the data directory") {
		t.Errorf("components as DATA's owner: Check %v, want a refusal", err)
	}

	dedicated, err := newDeployer(Options{DataDir: data, ComponentUID: owner + 1, ComponentGID: owner + 1, Logger: quiet}, nil, "core1", sock)
	if err != nil {
		t.Fatal(err)
	}
	if err := notWritableBy(dedicated.DataDir, dedicated.UID, dedicated.GID); err != nil {
		t.Errorf("a dedicated user: %v", err)
	}

	// A link where a log belongs is not followed.
	victim := filepath.Join(t.TempDir(), "root-only")
	if err := os.WriteFile(victim, []byte("root:x:0:0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := t.TempDir()
	if err := os.Symlink(victim, filepath.Join(logs, "writer.log")); err != nil {
		t.Fatal(err)
	}
	if r, err := openRotating(filepath.Join(logs, "writer.log"), 1<<20); err == nil {
		r.Write([]byte("evil::0:0::/root:/bin/sh\n"))
		r.Close()
		t.Error("a component log was opened through a symbolic link")
	}
	if b, _ := os.ReadFile(victim); string(b) != "root:x:0:0\n" {
		t.Errorf("the link's target was written: %q", b)
	}
}
