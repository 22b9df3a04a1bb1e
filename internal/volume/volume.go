// Package volume gives a job an encrypted scratch volume: the directory
// where its input is staged and where its hosts write their model and
// output, which SageMaker calls the ML storage volume and encrypts with
// VolumeKmsKeyId.
//
// The kernel convoy runs on may have no dm-crypt (this one has no device
// mapper at all), so the encryption is done in user space by gocryptfs
// (Debian package gocryptfs): every file is sealed in 4 KiB blocks with
// AES-256-GCM under keys derived from a random master key, file names are
// encrypted too, and what reaches the disk (base+".enc") is ciphertext only.
// The plaintext view (base) exists only as a FUSE mount while the job runs.
// The master key is wrapped in gocryptfs.conf under a password that convoy
// hands gocryptfs on its standard input and never writes down: a data key
// from KMS under VolumeKmsKeyId, or 32 random bytes when the job names no
// key. Once the job ends the mount goes and the ciphertext is deleted, so
// the password is gone with the volume.
//
// The size (VolumeSizeInGB) is a real limit, as on SageMaker, where a full
// volume gives the training code ENOSPC: the ciphertext lives on its own
// ext4 file system in a sparse image file of that size (base+".img"),
// loop-mounted at base+".enc". Where that cannot be set up (no loop
// devices), the volume is still encrypted but unbounded, and Mount says so.
//
// Written by hand because it is only the supervision of mkfs, mount and
// gocryptfs (create, unmount, clean up after a crash); gocryptfs itself is
// an audited, widely used file system and is not reimplemented here.
package volume

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mechanism describes the encryption, for job logs.
const Mechanism = "gocryptfs (FUSE): AES-256-GCM per 4 KiB block, encrypted file names, on its own ext4 image of the volume size"

// Volume is a mounted encrypted volume.
type Volume struct {
	// Dir is the plaintext view; use it like any directory.
	Dir    string
	cipher string
	// Bounded reports whether the size limit holds (the ciphertext has its
	// own file system); if not, Unbounded says why.
	Bounded   bool
	Unbounded error
}

// Check reports what is missing for encrypted volumes, with what to do.
func Check() error {
	if _, err := exec.LookPath("gocryptfs"); err != nil {
		return errors.New("gocryptfs is not installed (apt-get install gocryptfs): convoy encrypts every job's storage volume with it")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return errors.New("/dev/fuse is missing: encrypted job volumes need FUSE")
	}
	return nil
}

// fsOverhead is what ext4 keeps for itself on a small image (inode tables,
// bitmaps): the image is made this much larger than the size asked for.
const fsOverhead = 1.07

// bound makes the sparse image of size bytes and mounts its file system at
// dir.
func bound(ctx context.Context, base, dir string, size int64) error {
	img := base + ".img"
	f, err := os.OpenFile(img, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(int64(float64(size) * fsOverhead))
	f.Close()
	if err != nil {
		return err
	}
	// No journal: a scratch volume is thrown away, never recovered.
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
		"-E", "lazy_itable_init=1,lazy_journal_init=1", img).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.CommandContext(ctx, "mount", "-o", "loop,nosuid,nodev,noexec", img, dir).CombinedOutput(); err != nil {
		return fmt.Errorf("mount the volume image: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// Mount creates an encrypted volume of size bytes (0: unbounded) whose
// ciphertext lives under base+".enc" and whose plaintext view is mounted at
// base, with password material key (at least 32 bytes). base must not
// exist yet. If the size cannot be enforced, the volume is made anyway,
// with Bounded false and the reason in Unbounded.
func Mount(ctx context.Context, base string, key []byte, size int64) (*Volume, error) {
	if len(key) < 32 {
		return nil, errors.New("volume key: want at least 32 bytes")
	}
	if err := Check(); err != nil {
		return nil, err
	}
	v := &Volume{Dir: base, cipher: filepath.Join(base+".enc", "c")}
	for _, d := range []string{base + ".enc", v.Dir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("volume: %w", err)
		}
	}
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()
	if size > 0 {
		if v.Unbounded = bound(ctx, base, base+".enc", size); v.Unbounded == nil {
			v.Bounded = true
		} else {
			os.Remove(base + ".img")
		}
	}
	if err := os.Mkdir(v.cipher, 0o700); err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	password := base64.StdEncoding.EncodeToString(key) + "\n"
	// The password carries 256 bits of entropy: scrypt's cost buys nothing,
	// so its cheapest setting keeps job start fast.
	if err := gocryptfs(ctx, password, "-init", "-q", "-scryptn", "10", v.cipher); err != nil {
		return nil, fmt.Errorf("volume: create: %w", err)
	}
	// allow_other: the image user, not only root, must reach the files;
	// noprealloc: no fallocate per write (tmp-like scratch data).
	if err := gocryptfs(ctx, password, "-q", "-nosyslog", "-allow_other", "-noprealloc", v.cipher, v.Dir); err != nil {
		return nil, fmt.Errorf("volume: mount: %w", err)
	}
	mounted, err := isMountPoint(v.Dir)
	if err != nil || !mounted {
		return nil, fmt.Errorf("volume: %s is not mounted after gocryptfs returned (%v)", v.Dir, err)
	}
	ok = true
	return v, nil
}

func gocryptfs(ctx context.Context, password string, args ...string) error {
	// Output goes to a file, not a pipe: the mount's background process
	// inherits it, and a pipe would hold Run until the volume is unmounted.
	out, err := os.CreateTemp("", "convoy-gocryptfs-*.log")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(ctx, "gocryptfs", args...)
	cmd.Stdin = strings.NewReader(password)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg, _ := os.ReadFile(out.Name())
		return fmt.Errorf("gocryptfs %s: %w: %s", args[0], err, bytes.TrimSpace(msg))
	}
	return nil
}

// Close unmounts the volume and deletes its ciphertext. Idempotent.
func (v *Volume) Close() error { return Remove(v.Dir) }

// Remove unmounts the volume at base if it is mounted and deletes its view,
// its ciphertext and its image: for a volume left behind by a crash too.
func Remove(base string) error {
	for _, d := range []string{base, base + ".enc"} { // the view first: it lives on the image
		if mounted, err := isMountPoint(d); err == nil && mounted {
			if err := unmount(d); err != nil {
				return err
			}
		}
	}
	var errs []error
	for _, d := range []string{base, base + ".enc", base + ".img"} {
		if mounted, err := isMountPoint(d); err == nil && mounted {
			errs = append(errs, fmt.Errorf("volume: %s is still mounted; not deleting through it", d))
			continue
		}
		errs = append(errs, os.RemoveAll(d))
	}
	return errors.Join(errs...)
}

// unmount unmounts dir; a busy mount (a straggler holding a file) is
// detached lazily after a few tries, so that it goes once released.
func unmount(dir string) error {
	var err error
	for range 20 {
		if err = unix.Unmount(dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lerr := unix.Unmount(dir, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("volume: unmount %s: %v (lazy: %v)", dir, err, lerr)
	}
	return nil
}

// isMountPoint reports whether dir is a mount point, from
// /proc/self/mountinfo.
func isMountPoint(dir string) (bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false, err
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescape(fields[4]) == abs {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var n int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%3o", &n); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Gocryptfs mounts volumes with Mount and removes them with Remove: the
// form the job runners take (sagemaker.Volumes).
type Gocryptfs struct{}

func (Gocryptfs) Mount(ctx context.Context, base string, key []byte, size int64) (unbounded error, err error) {
	v, err := Mount(ctx, base, key, size)
	if err != nil {
		return nil, err
	}
	return v.Unbounded, nil
}

func (Gocryptfs) Remove(base string) error { return Remove(base) }

func (Gocryptfs) Mechanism() string { return Mechanism }
