package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func needVolumes(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts")
	}
	if err := Check(); err != nil {
		t.Fatalf("encrypted volumes unavailable: %v", err) // scripts/test.sh installs gocryptfs
	}
}

func key(t *testing.T) []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// grepTree reports the files under dir that contain needle.
func grepTree(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), string(needle)) {
			hits = append(hits, p+" (name)")
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(b, needle) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

func TestCiphertextOnlyAtRest(t *testing.T) {
	needVolumes(t)
	base := filepath.Join(t.TempDir(), "vol")
	v, err := Mount(context.Background(), base, key(t), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	canary := []byte("CANARY-volume-7f3a")
	data := bytes.Repeat(append(canary, '\n'), 10000)
	if err := os.MkdirAll(filepath.Join(v.Dir, "input", "CANARY-volume-7f3a-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(v.Dir, "input", "CANARY-volume-7f3a-dir", "CANARY-volume-7f3a.txt")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v, %d bytes, want %d", err, len(got), len(data))
	}
	if !v.Bounded {
		t.Fatalf("volume not bounded: %v", v.Unbounded)
	}
	// The image holds the file system the ciphertext lives on: its raw
	// bytes are what reaches the disk.
	exec.Command("sync").Run()
	for _, p := range []string{base + ".enc", base + ".img"} {
		if hits := grepTree(t, p, canary); len(hits) > 0 {
			t.Fatalf("plaintext at rest: %v", hits)
		}
	}
	// The view must hold the canary, or the search above proves nothing.
	if hits := grepTree(t, v.Dir, canary); len(hits) == 0 {
		t.Fatal("canary not found in the plaintext view")
	}

	// Another user (the image user of a container) can use the volume. (A
	// container gets its directories bind-mounted; here the path must be
	// traversable.)
	for _, d := range []string{filepath.Dir(filepath.Dir(base)), filepath.Dir(base), v.Dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(filepath.Join(v.Dir, "input"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("setpriv", "--reuid=1000", "--regid=1000", "--clear-groups",
		"sh", "-c", "echo ok > "+filepath.Join(v.Dir, "input", "by-user")+" && cat "+filepath.Join(v.Dir, "input", "by-user")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("uid 1000 on the volume: %v: %s", err, out)
	}

	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{base, base + ".enc"} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s left after Close: %v", d, err)
		}
	}
}

// TestTamperDetected flips one byte of a file's ciphertext: reading it must
// fail instead of returning altered data.
func TestTamperDetected(t *testing.T) {
	needVolumes(t)
	base := filepath.Join(t.TempDir(), "vol")
	v, err := Mount(context.Background(), base, key(t), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	data := bytes.Repeat([]byte("model weights "), 2000)
	if err := os.WriteFile(filepath.Join(v.Dir, "model.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	var ct []string
	filepath.WalkDir(base+".enc", func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, _ := d.Info(); fi != nil && fi.Size() > int64(len(data)) {
				ct = append(ct, p)
			}
		}
		return nil
	})
	if len(ct) != 1 {
		t.Fatalf("want one ciphertext file larger than the data, got %v", ct)
	}
	b, err := os.ReadFile(ct[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x01
	if err := os.WriteFile(ct[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Drop the kernel's page cache of the plaintext so the read goes to
	// gocryptfs.
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0o200)
	got, err := os.ReadFile(filepath.Join(v.Dir, "model.bin"))
	if err == nil {
		t.Fatalf("tampered file read without error (%d bytes, equal to original: %v)", len(got), bytes.Equal(got, data))
	}
}

// TestRemoveAfterCrash: a volume whose owner died (mount still there) is
// unmounted and deleted by Remove.
func TestRemoveAfterCrash(t *testing.T) {
	needVolumes(t)
	base := filepath.Join(t.TempDir(), "vol")
	v, err := Mount(context.Background(), base, key(t), 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v.Dir, "x"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No Close: as after kill -9 of convoy. Remove knows only the path.
	if err := Remove(base); err != nil {
		t.Fatal(err)
	}
	if m, _ := isMountPoint(base); m {
		t.Fatal("still mounted")
	}
	for _, p := range []string{base + ".enc", base + ".img"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left: %v", p, err)
		}
	}
	if err := Remove(base); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestMountRefusesShortKey(t *testing.T) {
	if _, err := Mount(context.Background(), filepath.Join(t.TempDir(), "v"), make([]byte, 16), 0); err == nil {
		t.Fatal("16-byte key accepted")
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b/c\011d`); got != "/a b/c\td" {
		t.Fatalf("got %q", got)
	}
}

// The size is a real limit: writing past it fails with ENOSPC, as a full
// SageMaker volume does, and the host's disk is not filled.
func TestSizeLimit(t *testing.T) {
	needVolumes(t)
	base := filepath.Join(t.TempDir(), "vol")
	v, err := Mount(context.Background(), base, key(t), 32<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !v.Bounded {
		t.Fatalf("volume not bounded: %v", v.Unbounded) // scripts/test.sh runs as root with loop devices
	}
	f, err := os.Create(filepath.Join(v.Dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	var written int
	for written < 64<<20 {
		n, err := f.Write(chunk)
		written += n
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("after %d bytes: %v, want ENOSPC", written, err)
			}
			break
		}
		if err := f.Sync(); err != nil { // gocryptfs reports ENOSPC on write or flush
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("sync after %d bytes: %v", written, err)
			}
			break
		}
	}
	if written >= 64<<20 {
		t.Fatalf("wrote %d bytes to a 32 MiB volume", written)
	}
	if written < 24<<20 {
		t.Fatalf("a 32 MiB volume took only %d bytes", written)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{base, base + ".enc", base + ".img"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left after Close: %v", p, err)
		}
	}
}
