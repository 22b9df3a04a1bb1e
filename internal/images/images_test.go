package images

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// TestImportAndRun imports the same program in every format convoy accepts,
// unpacks it and runs it: the image's bytes, modes and config survive.
func TestImportAndRun(t *testing.T) {
	img := helloImage(t)
	ociDigest := digestOf(t, img)
	layerTar := tarBytes(t, helloLayers(t)...)
	tests := []struct {
		name       string
		file       func(t *testing.T) string
		wantDigest string // "" when the store writes the manifest
	}{
		{"oci-layout-tar", func(t *testing.T) string { return ociTar(t, img) }, ociDigest},
		{"oci-layout-dir", func(t *testing.T) string { return ociDir(t, img) }, ociDigest},
		{"docker-archive", func(t *testing.T) string { return dockerArchive(t, img, "trainer:1") }, ""},
		{"docker-save-legacy", func(t *testing.T) string {
			return legacyDockerSave(t, helloConfig, "trainer:1", nil, layerTar, tarBytes(t, file("etc/motd", "hi\n")), layerTar)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t)
			var progress bytes.Buffer
			got, err := s.Import(t.Context(), tt.file(t), "trainer:1", &progress)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(progress.String(), "layer 1/") || !strings.Contains(progress.String(), got.Digest) {
				t.Errorf("progress does not show layers and digest:\n%s", progress.String())
			}
			if tt.wantDigest != "" && got.Digest != tt.wantDigest {
				t.Errorf("digest %s, want the layout's %s", got.Digest, tt.wantDigest)
			}
			if got.Ref != "trainer:1" || !got.Created.Equal(testTime) || got.Size <= int64(len(helloProgram(t)))/4 {
				t.Errorf("image %+v", got)
			}
			want := ImageConfig{Entrypoint: helloConfig.Entrypoint, Cmd: helloConfig.Cmd, Env: helloConfig.Env, WorkingDir: "/app", User: "1000:1000"}
			if fmt.Sprint(got.Config) != fmt.Sprint(want) {
				t.Errorf("config %+v, want %+v", got.Config, want)
			}
			checkStoreModes(t, s)
			for _, ref := range []string{"trainer:1", "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1", "trainer@" + got.Digest} {
				if r, err := s.Resolve(ref); err != nil || r.Digest != got.Digest {
					t.Errorf("Resolve(%s) = %s, %v; want %s", ref, r.Digest, err, got.Digest)
				}
			}

			rootfs := filepath.Join(t.TempDir(), "rootfs")
			if err := s.Unpack(t.Context(), got, rootfs); err != nil {
				t.Fatal(err)
			}
			runHello(t, rootfs, got)
		})
	}
}

// runHello runs the image's entrypoint from an unpacked rootfs with its env.
func runHello(t *testing.T, rootfs string, img Image) {
	t.Helper()
	bin := filepath.Join(rootfs, img.Config.Entrypoint[0])
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("%s has mode %v, want 0755", bin, fi.Mode())
	}
	cmd := exec.Command(bin, img.Config.Cmd...)
	cmd.Env = img.Config.Env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run %s: %v: %s", bin, err, out)
	}
	if want := "hello from a convoy image, GREETING=hi args=[train]\n"; string(out) != want {
		t.Errorf("output %q, want %q", out, want)
	}
}

// checkStoreModes checks that the store keeps everything to its owner.
func checkStoreModes(t *testing.T, s *Store) {
	t.Helper()
	err := filepath.WalkDir(s.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(p, s.rootfsDir()+string(filepath.Separator)) {
			return filepath.SkipDir // an image's own modes
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700 | os.ModeDir
		}
		if fi.Mode() != want {
			t.Errorf("%s has mode %v, want %v", p, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestResolve(t *testing.T) {
	s := openStore(t)
	trainer := importLayers(t, s, "trainer:1", []ent{file("a", "1")})
	team := importLayers(t, s, "team/tool:2", []ent{file("a", "2")})
	ecr := importLayers(t, s, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/full:3", []ent{file("a", "3")})
	tests := []struct {
		ref  string
		want string // Ref of the image found; "" for not found
	}{
		{"trainer:1", "trainer:1"},
		{"docker.io/library/trainer:1", "trainer:1"},
		{"index.docker.io/library/trainer:1", "trainer:1"},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1", "trainer:1"},
		{"999999999999.dkr.ecr-fips.us-gov-west-1.amazonaws.com/trainer:1", "trainer:1"},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com/team/tool:2", "team/tool:2"},
		{"docker.io/team/tool:2", "team/tool:2"},
		{"123456789012.dkr.ecr.eu-west-1.amazonaws.com/full:3", ecr.Ref},
		{"trainer@" + trainer.Digest, "trainer:1"},
		{"trainer:999@" + trainer.Digest, "trainer:1"},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer@" + trainer.Digest, "trainer:1"},
		{"elsewhere@" + team.Digest, "team/tool:2"},
		{team.Digest, "team/tool:2"},
		// not found
		{"trainer", ""},
		{"trainer:2", ""},
		{"quay.io/trainer:1", ""}, // only ECR references fall back to the short name
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com/full:3", ""},
		{"full:3", ""},
		{"trainer@sha256:" + strings.Repeat("0", 64), ""},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			img, err := s.Resolve(tt.ref)
			if tt.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Resolve = %+v, %v; want ErrNotFound", img, err)
				}
				if !strings.Contains(err.Error(), "convoy images import") || !strings.Contains(err.Error(), tt.ref) && !strings.Contains(err.Error(), "sha256:") {
					t.Errorf("error does not say what is missing and how to import it: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Ref != tt.want {
				t.Errorf("resolved to %s, want %s", img.Ref, tt.want)
			}
		})
	}

	t.Run("ECR not-found names the short name", func(t *testing.T) {
		_, err := s.Resolve("123456789012.dkr.ecr.us-east-1.amazonaws.com/missing:7")
		if err == nil || !strings.Contains(err.Error(), "FILE missing:7") {
			t.Errorf("error %v should suggest importing as missing:7", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		for _, ref := range []string{"Trainer:1", "trainer:", "trainer@sha256:abc", ""} {
			if _, err := s.Resolve(ref); err == nil || errors.Is(err, ErrNotFound) {
				t.Errorf("Resolve(%q) = %v, want a parse error", ref, err)
			}
		}
	})
}

func TestParseReference(t *testing.T) {
	tests := []struct{ in, canonical, familiar string }{
		{"trainer", "docker.io/library/trainer:latest", "trainer:latest"},
		{"trainer:1", "docker.io/library/trainer:1", "trainer:1"},
		{"docker.io/trainer:1", "docker.io/library/trainer:1", "trainer:1"},
		{"me/trainer:1", "docker.io/me/trainer:1", "me/trainer:1"},
		{"localhost:5000/trainer", "localhost:5000/trainer:latest", "localhost:5000/trainer:latest"},
		{"123456789012.dkr.ecr.us-east-1.amazonaws.com/a/b:c", "123456789012.dkr.ecr.us-east-1.amazonaws.com/a/b:c", "123456789012.dkr.ecr.us-east-1.amazonaws.com/a/b:c"},
		{"trainer@sha256:" + strings.Repeat("a", 64), "docker.io/library/trainer@sha256:" + strings.Repeat("a", 64), "trainer@sha256:" + strings.Repeat("a", 64)},
		{"sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("a", 64)},
	}
	for _, tt := range tests {
		r, err := parseReference(tt.in)
		if err != nil {
			t.Errorf("parseReference(%q): %v", tt.in, err)
			continue
		}
		if r.String() != tt.canonical || r.Familiar() != tt.familiar {
			t.Errorf("parseReference(%q) = %s, %s; want %s, %s", tt.in, r, r.Familiar(), tt.canonical, tt.familiar)
		}
	}
}

// TestImportRejectsCorruption: a blob whose content does not have the digest
// it is listed under fails the import, and nothing of it is kept.
func TestImportRejectsCorruption(t *testing.T) {
	img := helloImage(t)
	layers, _ := img.Layers()
	layerDigest, _ := layers[0].Digest()
	cfgDigest, _ := img.ConfigName()
	good := tarBytes(t, file("f", "good"))

	flip := func(t *testing.T, layoutDir string, h v1.Hash) {
		p := filepath.Join(layoutDir, "blobs", h.Algorithm, h.Hex)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		file func(t *testing.T) string
	}{
		{"oci layer", func(t *testing.T) string { d := ociDir(t, img); flip(t, d, layerDigest); return d }},
		{"oci config", func(t *testing.T) string { d := ociDir(t, img); flip(t, d, cfgDigest); return d }},
		{"oci layer in tar", func(t *testing.T) string { d := ociDir(t, img); flip(t, d, layerDigest); return tarDir(t, d) }},
		{"docker layer", func(t *testing.T) string {
			return legacyDockerSave(t, v1.Config{}, "trainer:1", tarBytes(t, file("f", "evil")), good)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t)
			_, err := s.Import(t.Context(), tt.file(t), "trainer:1", nil)
			t.Logf("Import: %v", err)
			if err == nil || !strings.Contains(err.Error(), "mismatch") {
				t.Fatalf("Import = %v, want a digest mismatch", err)
			}
			if _, err := s.Resolve("trainer:1"); !errors.Is(err, ErrNotFound) {
				t.Errorf("corrupt image resolves: %v", err)
			}
			for _, d := range []string{s.tmpDir()} {
				if ents, _ := os.ReadDir(d); len(ents) != 0 {
					t.Errorf("%s holds %d leftovers", d, len(ents))
				}
			}
			if _, err := os.Stat(s.blobPath(layerDigest)); err == nil {
				t.Errorf("corrupt layer was stored")
			}
		})
	}

	t.Run("stored blob corrupted after import", func(t *testing.T) {
		s := openStore(t)
		got, err := s.Import(t.Context(), ociDir(t, img), "trainer:1", nil)
		if err != nil {
			t.Fatal(err)
		}
		p := s.blobPath(layerDigest)
		b, _ := os.ReadFile(p)
		b[len(b)-20] ^= 0xff
		os.WriteFile(p, b, 0o600)
		err = s.Unpack(t.Context(), got, filepath.Join(t.TempDir(), "rootfs"))
		if err == nil {
			t.Fatal("Unpack of a corrupted blob succeeded")
		}
	})
}

// TestConcurrentImports imports two images under many tags from two Stores
// (as two processes would) while a third removes an image: refs.json ends up
// with exactly the expected references and no blob an image needs is lost.
func TestConcurrentImports(t *testing.T) {
	data := t.TempDir()
	a := ociTar(t, image(t, v1.Config{Cmd: []string{"a"}}, layer(t, file("a", "a"))))
	b := dockerArchive(t, image(t, v1.Config{Cmd: []string{"b"}}, layer(t, file("b", "b"))), "b:1")
	old := ociDir(t, image(t, v1.Config{Cmd: []string{"old"}}, layer(t, file("old", "old"))))
	s0, _ := Open(data)
	if _, err := s0.Import(t.Context(), old, "old:1", nil); err != nil {
		t.Fatal(err)
	}
	const n = 4
	var wg sync.WaitGroup
	errs := make(chan error, 2*n+1)
	for _, job := range []struct{ file, name string }{{a, "a"}, {b, "b"}} {
		wg.Go(func() {
			s, err := Open(data)
			if err != nil {
				errs <- err
				return
			}
			for i := range n {
				if _, err := s.Import(t.Context(), job.file, fmt.Sprintf("%s:%d", job.name, i), nil); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Go(func() {
		s, _ := Open(data)
		if err := s.Remove("old:1"); err != nil {
			errs <- err
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	imgs, err := s0.List()
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for _, img := range imgs {
		refs = append(refs, img.Ref)
		rootfs := filepath.Join(t.TempDir(), "r")
		if err := s0.Unpack(t.Context(), img, rootfs); err != nil {
			t.Errorf("unpack %s: %v", img.Ref, err)
		}
	}
	want := []string{"a:0", "a:1", "a:2", "a:3", "b:0", "b:1", "b:2", "b:3"}
	if !slices.Equal(refs, want) {
		t.Errorf("refs %v, want %v", refs, want)
	}
}

func TestRemove(t *testing.T) {
	s := openStore(t)
	shared := []ent{file("shared", "x")}
	one := importLayers(t, s, "one:1", shared, []ent{file("one", "1")})
	two := importLayers(t, s, "two:1", shared, []ent{file("two", "2")})
	rootfs, err := s.RootFS(t.Context(), one)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("docker.io/library/one:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve("one:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed image resolves: %v", err)
	}
	if _, err := os.Stat(rootfs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rootfs of the removed image is still there: %v", err)
	}
	// two still unpacks: the shared layer was kept.
	if err := s.Unpack(t.Context(), two, filepath.Join(t.TempDir(), "r")); err != nil {
		t.Fatal(err)
	}
	blobs, _ := os.ReadDir(s.blobDir())
	if len(blobs) != 4 { // two's manifest, config, two layers
		t.Errorf("%d blobs left, want 4", len(blobs))
	}
	if err := s.Remove("one:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	if err := s.Remove("two@" + two.Digest); err == nil {
		t.Errorf("Remove by digest succeeded")
	}
}

// TestRootFS: the cached root filesystem is unpacked once however many ask
// at once, and runs.
func TestRootFS(t *testing.T) {
	s := openStore(t)
	img, err := s.Import(t.Context(), ociTar(t, helloImage(t)), "trainer:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	paths := make([]string, 8)
	for i := range paths {
		wg.Go(func() {
			s, _ := Open(s.dataDir)
			p, err := s.RootFS(t.Context(), img)
			if err != nil {
				t.Error(err)
			}
			paths[i] = p
		})
	}
	wg.Wait()
	for _, p := range paths {
		if p != paths[0] {
			t.Fatalf("RootFS returned %v", paths)
		}
	}
	if want := filepath.Join(s.rootfsDir(), strings.TrimPrefix(img.Digest, "sha256:")); paths[0] != want {
		t.Errorf("rootfs at %s, want %s", paths[0], want)
	}
	runHello(t, paths[0], img)
	if ents, _ := os.ReadDir(s.tmpDir()); len(ents) != 0 {
		t.Errorf("tmp holds %d leftovers after concurrent unpacks", len(ents))
	}
}

// TestLayoutChoosesImage: from a layout holding several images, Import takes
// the one named like the reference, else the one for this machine.
func TestLayoutChoosesImage(t *testing.T) {
	mk := func(arch string) v1.Image {
		return image(t, v1.Config{Cmd: []string{arch}}, layer(t, file("arch", arch)))
	}
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	d := filepath.Join(t.TempDir(), "multi")
	p, err := layout.Write(d, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	p.AppendImage(mk(other), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: other}),
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "other"}))
	p.AppendImage(mk(runtime.GOARCH), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "native"}))

	s := openStore(t)
	for ref, want := range map[string]string{"x:latest": runtime.GOARCH, "x:other": other, "x:native": runtime.GOARCH} {
		img, err := s.Import(t.Context(), d, ref, nil)
		if err != nil {
			t.Fatal(err)
		}
		if img.Config.Cmd[0] != want {
			t.Errorf("import as %s took the %s image, want %s", ref, img.Config.Cmd[0], want)
		}
	}
}

func TestImportRejects(t *testing.T) {
	s := openStore(t)
	notTar := filepath.Join(t.TempDir(), "x")
	os.WriteFile(notTar, []byte("hello"), 0o600)
	gz := filepath.Join(t.TempDir(), "x.tar.gz")
	os.WriteFile(gz, []byte{0x1f, 0x8b, 8, 0, 0, 0}, 0o600)
	emptyTar := filepath.Join(t.TempDir(), "e.tar")
	os.WriteFile(emptyTar, tarBytes(t, file("README", "hi")), 0o600)
	linux := image(t, v1.Config{}, layer(t, file("a", "a")))
	cf, _ := linux.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS = "windows"
	windows, err := mutate.ConfigFile(linux, cf)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, file, ref, want string }{
		{"missing file", filepath.Join(t.TempDir(), "nope"), "x:1", "no such file"},
		{"not a tar", notTar, "x:1", "not a tar"},
		{"gzip", gz, "x:1", "gunzip"},
		{"no image", emptyTar, "x:1", "neither"},
		{"windows image", ociDir(t, windows), "x:1", "linux images"},
		{"digest ref", ociDir(t, linux), "x@sha256:" + strings.Repeat("a", 64), "NAME:TAG"},
		{"bad ref", ociDir(t, linux), "X:1", "image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Import(t.Context(), tt.file, tt.ref, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Import = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
