package images

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ent is one entry of a layer built by a test.
type ent struct {
	name string
	typ  byte // tar.TypeReg when 0
	mode int64
	body string
	link string
	uid  int
}

func file(name, body string) ent { return ent{name: name, body: body, mode: 0o644} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, to string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: to, mode: 0o777}
}
func hardlink(name, to string) ent { return ent{name: name, typ: tar.TypeLink, link: to} }

var testTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// tarBytes writes ents as an uncompressed tar, in order, with no checks: tests
// craft hostile layers with it.
func tarBytes(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, ModTime: testTime, Uid: e.uid, Gid: e.uid, Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer is a gzip-compressed layer made of ents.
func layer(t testing.TB, ents ...ent) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents...)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// image builds a linux image for this machine from layers, with cfg.
func image(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Created, cf.Config = "linux", runtime.GOARCH, v1.Time{Time: testTime}, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t testing.TB, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// ociDir writes img as an OCI image layout directory.
func ociDir(t testing.TB, img v1.Image, opts ...layout.Option) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(d, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, opts...); err != nil {
		t.Fatal(err)
	}
	return d
}

// tarDir packs a directory into a tar file, as `tar -C dir -cf out .` would.
func tarDir(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "layout.tar")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		h.Name = "./" + filepath.ToSlash(rel)
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// ociTar writes img as an OCI image layout in a tar file.
func ociTar(t testing.TB, img v1.Image) string { return tarDir(t, ociDir(t, img)) }

// dockerArchive writes img with go-containerregistry's `docker save` writer
// (gzip-compressed layers).
func dockerArchive(t testing.TB, img v1.Image, tag string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "docker.tar")
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(out, ref, img); err != nil {
		t.Fatal(err)
	}
	return out
}

// legacyDockerSave writes an archive the way docker save did before Docker
// 25: uncompressed <id>/layer.tar files, the config as <hex>.json, and a
// layer that two entries share stored once and symlinked. Each layer in
// layers is an uncompressed tar. corrupt, if set, replaces layer 0's content
// after its diff_id was computed.
func legacyDockerSave(t testing.TB, cfg v1.Config, tag string, corrupt []byte, layers ...[]byte) string {
	t.Helper()
	cf := v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH, Created: v1.Time{Time: testTime}, Config: cfg, RootFS: v1.RootFS{Type: "layers"}}
	var files []ent
	var manifestLayers []string
	seen := map[v1.Hash]string{}
	for i, l := range layers {
		h, _, _ := v1.SHA256(bytes.NewReader(l))
		cf.RootFS.DiffIDs = append(cf.RootFS.DiffIDs, h)
		p := h.Hex[:16] + "/layer.tar"
		if i > 0 && seen[h] != "" {
			p = "dup" + h.Hex[:13] + "/layer.tar"
			files = append(files, dir(filepath.Dir(p)), symlink(p, "../"+seen[h]))
		} else {
			body := l
			if i == 0 && corrupt != nil {
				body = corrupt
			}
			seen[h] = p
			files = append(files, dir(filepath.Dir(p)), ent{name: p, body: string(body), mode: 0o644})
		}
		manifestLayers = append(manifestLayers, p)
	}
	cfgRaw, err := json.Marshal(cf)
	if err != nil {
		t.Fatal(err)
	}
	ch, _, _ := v1.SHA256(bytes.NewReader(cfgRaw))
	m, _ := json.Marshal(tarball.Manifest{{Config: ch.Hex + ".json", RepoTags: []string{tag}, Layers: manifestLayers}})
	files = append([]ent{file(ch.Hex+".json", string(cfgRaw)), file("manifest.json", string(m))}, files...)
	out := filepath.Join(t.TempDir(), "legacy.tar")
	if err := os.WriteFile(out, tarBytes(t, files...), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

var (
	helloOnce sync.Once
	helloBin  []byte
	helloErr  error
)

// helloProgram is a tiny static Go program, built once per test run.
func helloProgram(t testing.TB) []byte {
	t.Helper()
	helloOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			helloErr = err
			return
		}
		d, err := os.MkdirTemp("", "convoy-hello-")
		if err != nil {
			helloErr = err
			return
		}
		defer os.RemoveAll(d)
		src := "package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n)\n\nfunc main() {\n\tfmt.Printf(\"hello from a convoy image, GREETING=%s args=%v\\n\", os.Getenv(\"GREETING\"), os.Args[1:])\n}\n"
		if err := os.WriteFile(filepath.Join(d, "main.go"), []byte(src), 0o600); err != nil {
			helloErr = err
			return
		}
		if err := os.WriteFile(filepath.Join(d, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o600); err != nil {
			helloErr = err
			return
		}
		cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", "hello", ".")
		cmd.Dir = d
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = &buildError{err, out}
			return
		}
		helloBin, helloErr = os.ReadFile(filepath.Join(d, "hello"))
	})
	if helloErr != nil {
		t.Skipf("cannot build the test program: %v", helloErr)
	}
	return helloBin
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + ": " + string(e.out) }

// helloLayers is the content of the test image: the program as /app/hello.
func helloLayers(t testing.TB) []ent {
	return []ent{
		dir("app/"),
		{name: "app/hello", body: string(helloProgram(t)), mode: 0o755},
		dir("etc/"),
		file("etc/os-release", "NAME=convoy-test\n"),
	}
}

var helloConfig = v1.Config{
	Entrypoint: []string{"/app/hello"},
	Cmd:        []string{"train"},
	Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hi"},
	WorkingDir: "/app",
	User:       "1000:1000",
}

func helloImage(t testing.TB) v1.Image {
	return image(t, helloConfig, layer(t, helloLayers(t)...))
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// importLayers builds an image from layers, imports it through an OCI layout
// and returns it.
func importLayers(t testing.TB, s *Store, ref string, layers ...[]ent) Image {
	t.Helper()
	var ls []v1.Layer
	for _, l := range layers {
		ls = append(ls, layer(t, l...))
	}
	img, err := s.Import(t.Context(), ociDir(t, image(t, v1.Config{}, ls...)), ref, nil)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
