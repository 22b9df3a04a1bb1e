package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

// Hostile layers against Unpack.

// rawHeader is a 512-byte ustar header with its checksum.
func rawHeader(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], "00000000000\x00")
	h[156] = typ
	copy(h[257:263], "ustar\x00")
	copy(h[263:265], "00")
	copy(h[148:156], "        ")
	sum := 0
	for _, b := range h {
		sum += int(b)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad512(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

func paxRecord(k, v string) string {
	rec := " " + k + "=" + v + "\n"
	n := len(rec)
	for {
		s := strconv.Itoa(n) + rec
		if len(s) == n {
			return s
		}
		n = len(s)
	}
}

// sparseBombTar is a tar of about 2 KiB holding one PAX 1.0 sparse file
// "big" of realsize bytes that are all a hole.
func sparseBombTar(realsize int64) []byte {
	pax := paxRecord("GNU.sparse.major", "1") + paxRecord("GNU.sparse.minor", "0") +
		paxRecord("GNU.sparse.name", "big") + paxRecord("GNU.sparse.realsize", strconv.FormatInt(realsize, 10))
	var out []byte
	out = append(out, rawHeader("PaxHeaders/big", 'x', int64(len(pax)))...)
	out = append(out, pad512([]byte(pax))...)
	smap := pad512([]byte("0\n")) // no data regions: the whole file is a hole
	out = append(out, rawHeader("big", '0', int64(len(smap)))...)
	out = append(out, smap...)
	out = append(out, make([]byte, 1024)...) // end of archive
	return out
}

// A layer of about 2 KiB declaring a sparse file of 1 TiB (tar reads its
// holes as zeros) is refused before a byte of it is written: an image may
// not take more than its disk budget (diskBudget).
func TestUnpackRefusesSparseBomb(t *testing.T) {
	const realsize = 1 << 40
	b := sparseBombTar(realsize)
	// Sanity: archive/tar reads it as a 1 TiB file.
	tr := tar.NewReader(bytes.NewReader(b))
	h, err := tr.Next()
	if err != nil || h.Size != realsize {
		t.Fatalf("crafted tar: %v %+v", err, h)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	img, err := s.Import(t.Context(), ociDir(t, image(t, v1.Config{}, l)), "bomb:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := s.Unpack(t.Context(), img, root); !errors.Is(err, errTooLarge) {
		t.Fatalf("Unpack of a %d-byte layer declaring %d bytes: %v, want the disk budget's refusal", len(b), int64(realsize), err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "big"), &st); err == nil {
		t.Errorf("big exists after the refusal: %d bytes allocated", st.Blocks*512)
	}
}

// MaxExpandedSize bounds an image's files when it is unpacked, and a
// layer's decompressed size when a docker-archive is imported: the same
// image passes with a budget above its size and fails below it.
func TestExpandedSizeBudget(t *testing.T) {
	defer func(old int64) { MaxExpandedSize = old }(MaxExpandedSize)
	zeros := strings.Repeat("\x00", 2<<20) // compresses to a few KiB
	img := image(t, v1.Config{}, layer(t, file("zeros", zeros)))

	MaxExpandedSize = 4 << 20
	s := openStore(t)
	got, err := s.Import(t.Context(), dockerArchive(t, img, "z:1"), "z:1", nil)
	if err != nil {
		t.Fatalf("import within the budget: %v", err)
	}
	if err := s.Unpack(t.Context(), got, filepath.Join(t.TempDir(), "ok")); err != nil {
		t.Fatalf("unpack within the budget: %v", err)
	}

	MaxExpandedSize = 1 << 20
	if err := s.Unpack(t.Context(), got, filepath.Join(t.TempDir(), "over")); !errors.Is(err, errTooLarge) {
		t.Errorf("unpack of a 2 MiB file with a 1 MiB budget: %v", err)
	}
	if _, err := openStore(t).Import(t.Context(), dockerArchive(t, img, "z:1"), "z:1", nil); !errors.Is(err, errTooLarge) {
		t.Errorf("import of a docker-archive whose layer decompresses to 2 MiB, with a 1 MiB budget: %v", err)
	}
}

// made; a hard link to a symlink pointing outside links the symlink itself.
func TestUnpackIgnoresCapabilitiesAndDevices(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	capV3 := string([]byte{0x00, 0x00, 0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	ents := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "bin/capped", Typeflag: tar.TypeReg, Mode: 0o755, Size: 1, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": capV3, "SCHILY.xattr.trusted.x": "y"}},
		{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "dev/sda", Typeflag: tar.TypeBlock, Mode: 0o666, Devmajor: 8},
		{Name: "dev/mem", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 1},
		{Name: "esc", Typeflag: tar.TypeSymlink, Linkname: "/etc/shadow"},
		{Name: "hl", Typeflag: tar.TypeLink, Linkname: "esc"},
	}
	for _, h := range ents {
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size == 1 {
			tw.Write([]byte("x"))
		}
	}
	tw.Close()
	raw := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	s := openStore(t)
	img, err := s.Import(t.Context(), ociDir(t, image(t, v1.Config{}, l)), "caps:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := s.Unpack(t.Context(), img, root); err != nil {
		t.Fatal(err)
	}
	for _, x := range []string{"security.capability", "trusted.x"} {
		if n, err := unix.Lgetxattr(filepath.Join(root, "bin/capped"), x, make([]byte, 64)); err == nil {
			t.Errorf("bin/capped carries %s (%d bytes)", x, n)
		}
	}
	for _, d := range []string{"dev/sda", "dev/mem"} {
		if _, err := os.Lstat(filepath.Join(root, d)); err == nil {
			t.Errorf("%s was created", d)
		}
	}
	fi, err := os.Lstat(filepath.Join(root, "hl"))
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("hl: %v %v; want a link to the symlink itself", fi, err)
	}
}
