package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	v, err := Mount(context.Background(), base, key(t))
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
	if hits := grepTree(t, base+".enc", canary); len(hits) > 0 {
		t.Fatalf("plaintext at rest: %v", hits)
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
	v, err := Mount(context.Background(), base, key(t))
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
	v, err := Mount(context.Background(), base, key(t))
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
	if _, err := os.Stat(base + ".enc"); !os.IsNotExist(err) {
		t.Fatalf("ciphertext left: %v", err)
	}
	if err := Remove(base); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestMountRefusesShortKey(t *testing.T) {
	if _, err := Mount(context.Background(), filepath.Join(t.TempDir(), "v"), make([]byte, 16)); err == nil {
		t.Fatal("16-byte key accepted")
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b/c\011d`); got != "/a b/c\td" {
		t.Fatalf("got %q", got)
	}
}
