package sagemaker

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An image whose /etc/passwd is a FIFO (layers may hold FIFOs, and Unpack
// makes them) and whose USER is a name must not hang the runner: opening a
// FIFO for reading blocks until a writer appears, which never happens, and
// no context could cancel the open. imageUserIn refuses it at once.
func TestImageUserPasswdFIFO(t *testing.T) {
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "etc", "passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := imageUserIn(root, "trainer")
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("imageUserIn with /etc/passwd a FIFO: %v, want a refusal", err)
		}
	case <-time.After(3 * time.Second):
		// Release the blocked open so the test process can exit.
		if f, err := os.OpenFile(filepath.Join(root, "etc", "passwd"), os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		<-done
		t.Errorf("imageUserIn blocked for 3s on an image's /etc/passwd FIFO: a job start hangs forever (ctx cannot cancel it)")
	}
}
