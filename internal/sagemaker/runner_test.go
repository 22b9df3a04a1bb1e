package sagemaker

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"convoy/internal/images"
)

func TestContainerArgs(t *testing.T) {
	img := images.ImageConfig{Entrypoint: []string{"/bin/trainer", "-v"}, Cmd: []string{"serve"}}
	for _, tc := range []struct {
		name string
		spec AlgorithmSpecification
		cfg  images.ImageConfig
		want []string
	}{
		{"entrypoint + train", AlgorithmSpecification{}, img, []string{"/bin/trainer", "-v", "train"}},
		{"no entrypoint", AlgorithmSpecification{}, images.ImageConfig{Cmd: []string{"x"}}, []string{"train"}},
		{"arguments replace train", AlgorithmSpecification{ContainerArguments: []string{"--epochs", "2"}}, img, []string{"/bin/trainer", "-v", "--epochs", "2"}},
		{"container entrypoint", AlgorithmSpecification{ContainerEntrypoint: []string{"python", "t.py"}, ContainerArguments: []string{"a"}}, img, []string{"python", "t.py", "a"}},
	} {
		if got := containerArgs(&tc.spec, tc.cfg); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestImageUser(t *testing.T) {
	for _, tc := range []struct {
		user     string
		uid, gid uint32
		ok       bool
	}{
		{"", 0, 0, true}, {"root", 0, 0, true}, {"1000", 1000, 1000, true}, {"1000:50", 1000, 50, true},
		{"sagemaker", 0, 0, false}, {"1000:staff", 0, 0, false},
	} {
		uid, gid, err := imageUser(tc.user)
		if (err == nil) != tc.ok || uid != tc.uid || gid != tc.gid {
			t.Errorf("%q: %d:%d %v", tc.user, uid, gid, err)
		}
	}
}

// A model directory is written by the training code: its symbolic links
// are archived as links and never followed out of it.
func TestTarGzDoesNotFollowLinks(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub", "w.bin"), []byte("weights"), 0o644)
	os.Symlink("/etc/hostname", filepath.Join(dir, "escape"))
	out := filepath.Join(t.TempDir(), "m.tar.gz")
	n, err := tarGz(dir, out)
	if err != nil || n != 3 {
		t.Fatalf("tarGz: %d entries, %v", n, err)
	}
	f, _ := os.Open(out)
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	got := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		got[h.Name] = string(h.Typeflag) + ":" + h.Linkname + ":" + string(b)
	}
	want := map[string]string{"sub/": "5::", "sub/w.bin": "0::weights", "escape": "2:/etc/hostname:"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if n, err := tarGz(t.TempDir(), out); err != nil || n != 0 {
		t.Fatalf("empty dir: %d %v", n, err)
	}
}

// A setuid program a container leaves in /opt/ml/model is archived without
// its setuid, setgid and sticky bits (it is root's in the archive).
func TestTarGzDropsSetuid(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tool")
	os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
	if err := os.Chmod(p, 0o755|os.ModeSetuid|os.ModeSetgid|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "m.tar.gz")
	if _, err := tarGz(dir, out); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(out)
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	h, err := tar.NewReader(gz).Next()
	if err != nil {
		t.Fatal(err)
	}
	if h.Name != "tool" || h.Mode != 0o755 {
		t.Errorf("%s archived with mode %o, want 755", h.Name, h.Mode)
	}
}

func TestValidateUnknownImage(t *testing.T) {
	store, err := images.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &LocalRunner{Images: store}
	req := &CreateTrainingJobRequest{AlgorithmSpecification: &AlgorithmSpecification{TrainingImage: "trainer:1"}}
	err = r.Validate(context.Background(), req)
	if err == nil || !strings.Contains(err.Error(), "convoy images import") {
		t.Fatalf("unknown image: %v", err)
	}
}

// User names resolve in the image's own /etc files, never the host's: an
// image whose /etc/passwd is a link to the host's file gets no answer.
func TestImageUserNames(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0::/root:/bin/sh\nsagemaker:x:1001:1002::/home/sm:/bin/sh\nbroken:x:abc:1\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte("root:x:0:\nstaff:x:50:sagemaker\n"), 0o644)
	for _, tc := range []struct {
		user     string
		uid, gid uint32
		ok       bool
	}{
		{"sagemaker", 1001, 1002, true}, {"sagemaker:staff", 1001, 50, true}, {"sagemaker:7", 1001, 7, true},
		{"1000:staff", 1000, 50, true}, {"1000", 1000, 1000, true},
		{"nobody", 0, 0, false}, {"sagemaker:wheel", 0, 0, false}, {"broken", 0, 0, false},
	} {
		uid, gid, err := imageUserIn(root, tc.user)
		if (err == nil) != tc.ok || uid != tc.uid || gid != tc.gid {
			t.Errorf("%q: %d:%d %v", tc.user, uid, gid, err)
		}
	}

	escape := t.TempDir()
	os.MkdirAll(filepath.Join(escape, "etc"), 0o755)
	os.Symlink("/etc/passwd", filepath.Join(escape, "etc", "passwd"))
	if uid, _, err := imageUserIn(escape, "root:daemon"); err == nil {
		t.Fatalf("resolved through a link to the host: uid %d", uid)
	}
	if _, _, err := imageUserIn(escape, "daemon"); err == nil {
		t.Fatal("user daemon resolved through a link to the host's /etc/passwd")
	}
}

// A container with the credentials endpoint gets its URI and no keys, and
// neither its image nor its job's Environment can point its SDKs to other
// credentials; an isolated one gets no credentials variable at all.
func TestContainerEnvCredentials(t *testing.T) {
	cfg := images.ImageConfig{Env: []string{"PATH=/bin", "AWS_ACCESS_KEY_ID=AKIAIMAGE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI=/image"}}
	envOf := func(uri string) (map[string]string, []string) {
		j := &jobRun{job: &Job{Name: "j", Request: CreateTrainingJobRequest{
			Environment: map[string]string{"AWS_SECRET_ACCESS_KEY": "user", "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1/x", "MINE": "1"},
		}}, env: []string{"AWS_REGION=us-east-1"}, credsURI: uri}
		var pj ProcessingJob
		pj.Request.Environment = j.job.Request.Environment
		list := j.containerEnv(cfg)
		m := map[string]string{}
		for _, kv := range list {
			k, v, _ := strings.Cut(kv, "=")
			if _, dup := m[k]; dup {
				t.Errorf("%s twice in %q", k, list)
			}
			m[k] = v
		}
		return m, processingEnv(j, &pj.Request, cfg)
	}
	m, proc := envOf("/v2/credentials/abc")
	if m[relativeURIVar] != "/v2/credentials/abc" || m["MINE"] != "1" || m["AWS_REGION"] != "us-east-1" || m["PATH"] != "/bin" {
		t.Errorf("env %v", m)
	}
	for _, k := range credentialVars[:len(credentialVars)-1] {
		if _, ok := m[k]; ok {
			t.Errorf("%s kept: %v", k, m)
		}
	}
	if !slices.Contains(proc, relativeURIVar+"=/v2/credentials/abc") || slices.ContainsFunc(proc, func(kv string) bool {
		return strings.HasPrefix(kv, "AWS_ACCESS_KEY_ID=") || strings.HasPrefix(kv, "AWS_SECRET_ACCESS_KEY=")
	}) {
		t.Errorf("processing env %q", proc)
	}
	// Isolated: what the image and the job set stays, convoy adds nothing.
	if m, _ := envOf(""); m[relativeURIVar] != "/image" || m["AWS_SECRET_ACCESS_KEY"] != "user" {
		t.Errorf("isolated env %v", m)
	}
}
