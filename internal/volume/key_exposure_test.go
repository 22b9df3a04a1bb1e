package volume

import (
	"bytes"
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The volume password reaches gocryptfs on stdin only: neither the
// command line nor the environment of the gocryptfs process that serves
// the mount (readable through /proc by other users for cmdline) carries
// the key, raw or base64; and what the mount leaves on disk next to the
// ciphertext is private (0700 directories, gocryptfs.conf 0400).
func TestKeyNotInProcAndModesPrivate(t *testing.T) {
	needVolumes(t)
	k := key(t)
	base := filepath.Join(t.TempDir(), "vol")
	v, err := Mount(context.Background(), base, k, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	needles := [][]byte{k, []byte(base64.StdEncoding.EncodeToString(k))}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	found := 0
	for _, p := range procs {
		cmdline, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(cmdline, []byte("gocryptfs")) || !bytes.Contains(cmdline, []byte(base)) {
			continue
		}
		found++
		environ, _ := os.ReadFile(strings.TrimSuffix(p, "cmdline") + "environ")
		for _, n := range needles {
			if bytes.Contains(cmdline, n) || bytes.Contains(environ, n) {
				t.Errorf("%s: the volume key is in the gocryptfs process's command line or environment", p)
			}
		}
	}
	if found == 0 {
		t.Fatal("no gocryptfs process serving the mount found in /proc")
	}
	filepath.Walk(base+".enc", func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		// Files under a 0700 directory are out of others' reach
		// (gocryptfs.diriv is 0444 by design); gocryptfs.conf, which holds
		// the wrapped master key, must be private itself.
		if (fi.IsDir() || fi.Name() == "gocryptfs.conf") && fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %o: group/other may reach the ciphertext or gocryptfs.conf", p, fi.Mode().Perm())
		}
		return nil
	})
	for _, d := range []string{base} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("plaintext view %s has mode %o under -allow_other: other users may read the job's files", d, fi.Mode().Perm())
		}
	}
}
