package edge

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return base64.StdEncoding.EncodeToString(s[:])
}

func TestParseDeployment(t *testing.T) {
	good := digest([]byte("x"))
	doc := func(mutate func(c map[string]any)) []byte {
		c := map[string]any{
			"ComponentName": "hello", "ComponentVersion": "1.0.0",
			"Artifacts": []map[string]any{{"Uri": "s3://b/k/run.sh", "Digest": good, "Algorithm": "SHA-256", "Unarchive": "NONE"}},
			"Lifecycle": map[string]any{"Run": []string{"run.sh", "-v"}},
		}
		mutate(c)
		b, _ := json.Marshal(map[string]any{"DeploymentId": "d1", "Components": []any{c}})
		return b
	}
	art := func(c map[string]any) map[string]any { return c["Artifacts"].([]map[string]any)[0] }
	tests := []struct {
		name   string
		mutate func(c map[string]any)
		want   string // "" is valid
	}{
		{"valid", func(map[string]any) {}, ""},
		{"absolute argv0", func(c map[string]any) { c["Lifecycle"] = map[string]any{"Run": []string{"/bin/sleep", "1"}} }, ""},
		{"bad name", func(c map[string]any) { c["ComponentName"] = "../x" }, "ComponentName"},
		{"empty version", func(c map[string]any) { c["ComponentVersion"] = "" }, "ComponentVersion"},
		{"missing digest", func(c map[string]any) { delete(art(c), "Digest") }, "Digest is required"},
		{"bad digest length", func(c map[string]any) { art(c)["Digest"] = base64.StdEncoding.EncodeToString([]byte("short")) }, "32-byte"},
		{"digest not base64", func(c map[string]any) { art(c)["Digest"] = "!!!" }, "32-byte"},
		{"unknown algorithm", func(c map[string]any) { art(c)["Algorithm"] = "MD5" }, "only SHA-256"},
		{"unarchive zip", func(c map[string]any) { art(c)["Unarchive"] = "ZIP" }, "only NONE is supported for now"},
		{"https uri", func(c map[string]any) { art(c)["Uri"] = "https://example.com/run.sh" }, "s3://BUCKET/KEY"},
		{"argv0 not an artifact", func(c map[string]any) { c["Lifecycle"] = map[string]any{"Run": []string{"other.sh"}} }, "neither an artifact"},
		{"argv0 relative path", func(c map[string]any) { c["Lifecycle"] = map[string]any{"Run": []string{"../run.sh"}} }, "neither an artifact"},
		{"empty run", func(c map[string]any) { c["Lifecycle"] = map[string]any{"Run": []string{}} }, "Lifecycle.Run is empty"},
		{"reserved env", func(c map[string]any) { c["Environment"] = map[string]string{"CONVOY_EDGE_IPC": "/tmp/x"} }, "CONVOY_EDGE_"},
		{"unknown field", func(c map[string]any) { c["Install"] = "rm -rf /" }, "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDeployment(doc(tt.mutate))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// fakeS3 serves objects from a map, with ETags and If-None-Match.
type fakeS3 struct {
	mu      sync.Mutex
	objects map[string][]byte // "bucket/key"
	gets    int
}

type httpErr int

func (e httpErr) Error() string       { return fmt.Sprintf("http %d", int(e)) }
func (e httpErr) HTTPStatusCode() int { return int(e) }

func (f *fakeS3) put(bucket, key string, b []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objects[bucket+"/"+key] = b
}

func (f *fakeS3) get(bucket, key string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.objects[bucket+"/"+key]
}

func (f *fakeS3) GetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	b, ok := f.objects[*in.Bucket+"/"+*in.Key]
	if !ok {
		return nil, httpErr(404)
	}
	etag := `"` + digest(b) + `"`
	if in.IfNoneMatch != nil && *in.IfNoneMatch == etag {
		return nil, httpErr(304)
	}
	return &s3.GetObjectOutput{Body: io.NopCloser(bytes.NewReader(b)), ETag: aws.String(etag)}, nil
}

func (f *fakeS3) PutObject(_ context.Context, in *s3.PutObjectInput, _ ...func(*s3.Options)) (*s3.PutObjectOutput, error) {
	b, err := io.ReadAll(in.Body)
	if err != nil {
		return nil, err
	}
	f.put(*in.Bucket, *in.Key, b)
	return &s3.PutObjectOutput{}, nil
}

func testDeployer(t *testing.T, fake *fakeS3) *Deployer {
	t.Helper()
	dir := t.TempDir()
	return &Deployer{S3: fake, Bucket: "fleet", Prefix: "edge/", Core: "core1", Dir: filepath.Join(dir, "deployments"),
		LogDir: filepath.Join(dir, "logs"), IPC: filepath.Join(dir, "ipc.sock"),
		UID: uint32(os.Geteuid()), GID: uint32(os.Getegid()), AllowRoot: true,
		Poll: 50 * time.Millisecond, Settle: 300 * time.Millisecond, StopGrace: 2 * time.Second,
		RestartMin: 20 * time.Millisecond, RestartMax: 100 * time.Millisecond,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func deploymentDoc(id string, comps ...Component) []byte {
	b, _ := json.Marshal(Deployment{DeploymentId: id, Components: comps})
	return b
}

func scriptComponent(name, version, uri string, digest string) Component {
	return Component{ComponentName: name, ComponentVersion: version,
		Artifacts: []Artifact{{Uri: uri, Digest: digest, Algorithm: "SHA-256"}},
		Lifecycle: Lifecycle{Run: []string{"run.sh"}}, Environment: map[string]string{"GREETING": "hi"}}
}

func readStatus(t *testing.T, fake *fakeS3, d *Deployer) DeploymentStatus {
	t.Helper()
	var st DeploymentStatus
	if err := json.Unmarshal(fake.get(d.Bucket, d.StatusKey()), &st); err != nil {
		t.Fatalf("status: %v", err)
	}
	return st
}

// A good deployment runs; one with a wrong digest installs nothing and
// leaves it running; one whose component exits at once rolls back.
func TestDeployerApply(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	fake := &fakeS3{objects: map[string][]byte{}}
	d := testDeployer(t, fake)
	if err := d.ready(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	defer func() {
		if d.current != nil {
			stopAll(d.current.sups)
		}
	}()

	good := []byte("#!/bin/sh\necho \"$GREETING from $CONVOY_EDGE_COMPONENT\"\nexec sleep 60\n")
	fake.put("art", "hello/run.sh", good)
	fake.put("fleet", d.DocumentKey(), deploymentDoc("d1", scriptComponent("hello", "1.0.0", "s3://art/hello/run.sh", digest(good))))
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st := readStatus(t, fake, d)
	if st.Status != "SUCCEEDED" || len(st.Components) != 1 || st.Components[0].State != "RUNNING" {
		t.Fatalf("status %+v", st)
	}
	pid := d.current.sups[0].Pid()
	installed, _ := filepath.Glob(filepath.Join(d.Dir, "components", "hello", "1.0.0-*", "run.sh"))
	if len(installed) != 1 {
		t.Fatalf("installed: %v", installed)
	}
	if fi, _ := os.Stat(installed[0]); fi.Mode().Perm() != 0o750 {
		t.Fatalf("run.sh mode %v", fi.Mode())
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if !bytes.Contains(env, []byte("CONVOY_EDGE_COMPONENT=hello\x00")) || !bytes.Contains(env, []byte("CONVOY_EDGE_IPC="+d.IPC+"\x00")) {
		t.Fatalf("component environment: %q", env)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "must-not-leak") // the core's own environment
	if bytes.Contains(env, []byte("AWS_")) || strings.Contains(strings.Join(componentEnv(d.current.sups[0].prep, d.IPC), " "), "must-not-leak") {
		t.Fatalf("the core's environment leaked: %q", env)
	}
	waitUntil(t, func() bool {
		b, _ := os.ReadFile(filepath.Join(d.LogDir, "hello.log"))
		return strings.Contains(string(b), "hi from hello")
	})

	// Unchanged document: a 304, nothing applied.
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if d.current.sups[0].Pid() != pid {
		t.Fatal("an unchanged document restarted the component")
	}

	// Wrong digest: nothing of d2 is installed, d1 keeps running.
	bad := []byte("#!/bin/sh\nexec sleep 60\n")
	fake.put("art", "hello/v2/run.sh", bad)
	other := []byte("#!/bin/sh\nexec sleep 61\n")
	fake.put("art", "side/run.sh", other)
	fake.put("fleet", d.DocumentKey(), deploymentDoc("d2",
		scriptComponent("side", "1.0.0", "s3://art/side/run.sh", digest(other)),
		scriptComponent("hello", "2.0.0", "s3://art/hello/v2/run.sh", digest([]byte("something else")))))
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st = readStatus(t, fake, d)
	if st.Status != "FAILED" || st.DeploymentId != "d2" || !strings.Contains(st.Reason, "s3://art/hello/v2/run.sh") ||
		!strings.Contains(st.Reason, digest(bad)) || !strings.Contains(st.Reason, digest([]byte("something else"))) {
		t.Fatalf("status %+v", st)
	}
	if d.current.id != "d1" || d.current.sups[0].Pid() != pid {
		t.Fatal("d1 was disturbed by a failed download")
	}
	for _, dir := range []string{filepath.Join(d.Dir, "components", "side"), filepath.Join(d.Dir, "components", "hello", "2.0.0-*")} {
		if m, _ := filepath.Glob(dir); len(m) != 0 {
			t.Fatalf("installed after a digest mismatch: %v", m)
		}
	}
	if m, _ := os.ReadDir(filepath.Join(d.Dir, "staging")); len(m) != 0 {
		t.Fatalf("staging left behind: %v", m)
	}

	// A component that exits at once: FAILED, d1 restarted.
	quits := []byte("#!/bin/sh\nexit 3\n")
	fake.put("art", "hello/v3/run.sh", quits)
	fake.put("fleet", d.DocumentKey(), deploymentDoc("d3", scriptComponent("hello", "3.0.0", "s3://art/hello/v3/run.sh", digest(quits))))
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	st = readStatus(t, fake, d)
	if st.Status != "FAILED" || !strings.Contains(st.Reason, "rolled back to deployment d1") || st.Components[0].ComponentVersion != "1.0.0" {
		t.Fatalf("status %+v", st)
	}
	if d.current.id != "d1" {
		t.Fatal("d1 was not restarted")
	}
	waitUntil(t, func() bool { return d.current.sups[0].Pid() != 0 })
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatal("the old process of d1 is still alive")
	}
}

func waitUntil(t *testing.T, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testSupervisor(t *testing.T, script string, grace time.Duration) *supervisor {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte(script), 0o750); err != nil {
		t.Fatal(err)
	}
	p := prepared{spec: Component{ComponentName: "c", ComponentVersion: "1", Lifecycle: Lifecycle{Run: []string{"run.sh"}}}, dir: dir}
	s := &supervisor{prep: p, logPath: filepath.Join(dir, "c.log"), env: componentEnv(p, "/nonexistent"),
		uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), grace: grace,
		restartMin: 10 * time.Millisecond, restartMax: 50 * time.Millisecond, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func TestSupervisorRestarts(t *testing.T) {
	s := testSupervisor(t, "#!/bin/sh\necho run >> runs\nexit 1\n", time.Second)
	waitUntil(t, func() bool { return s.status().Restarts >= 3 })
	b, _ := os.ReadFile(filepath.Join(s.prep.dir, "runs"))
	if n := strings.Count(string(b), "run"); n < 3 {
		t.Fatalf("ran %d times", n)
	}
}

func TestSupervisorStop(t *testing.T) {
	// Obeys SIGTERM: stops well before the grace.
	s := testSupervisor(t, "#!/bin/sh\nexec sleep 60\n", 5*time.Second)
	waitUntil(t, func() bool { return s.status().State == "RUNNING" })
	pid := s.Pid()
	began := time.Now()
	s.stop()
	if took := time.Since(began); took > 2*time.Second {
		t.Fatalf("SIGTERM did not stop it: %v", took)
	}
	if syscall.Kill(pid, 0) == nil || s.status().State != "STOPPED" {
		t.Fatal("still running")
	}

	// Ignores SIGTERM: killed after the grace.
	const grace = 500 * time.Millisecond
	s = testSupervisor(t, "#!/bin/sh\ntrap 'echo TERM >> got' TERM\necho up > up\nwhile :; do sleep 0.05; done\n", grace)
	waitUntil(t, func() bool { _, err := os.Stat(filepath.Join(s.prep.dir, "up")); return err == nil })
	pid = s.Pid()
	began = time.Now()
	s.stop()
	if took := time.Since(began); took < grace {
		t.Fatalf("stopped after %v, before the grace", took)
	}
	if syscall.Kill(pid, 0) == nil {
		t.Fatal("still running after SIGKILL")
	}
	if b, _ := os.ReadFile(filepath.Join(s.prep.dir, "got")); !strings.Contains(string(b), "TERM") {
		t.Fatal("SIGTERM was not sent first")
	}
	if s.status().Restarts != 0 {
		t.Fatal("a stopped component was restarted")
	}
}

func TestReachable(t *testing.T) {
	dir := t.TempDir()
	closed := filepath.Join(dir, "closed")
	open := filepath.Join(dir, "open")
	os.Mkdir(closed, 0o700)
	os.Mkdir(open, 0o711)
	os.Chmod(closed, 0o700)
	os.Chmod(open, 0o711)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	const nobody = 65534
	if err := reachable(filepath.Join(closed, "x"), nobody, nobody); err == nil {
		t.Error("a 0700 directory of another user was reachable")
	}
	if err := reachable(filepath.Join(open, "x"), nobody, nobody); err != nil && os.Geteuid() == 0 {
		t.Error(err)
	}
}

func TestDeployerCheck(t *testing.T) {
	fake := &fakeS3{objects: map[string][]byte{}}
	d := testDeployer(t, fake)
	d.UID, d.AllowRoot = 0, false
	if err := d.Check(); err == nil || !strings.Contains(err.Error(), "--allow-root-components") {
		t.Fatalf("root components: %v", err)
	}
	if os.Geteuid() != 0 {
		return
	}
	// nobody cannot traverse the 0700 directory that holds the socket.
	d.UID, d.GID = 65534, 65534
	d.Dir = t.TempDir()
	os.Chmod(d.Dir, 0o755)
	os.Chmod(filepath.Dir(d.Dir), 0o755)
	os.Chmod(filepath.Dir(d.IPC), 0o700)
	err := d.Check()
	if err == nil || !strings.Contains(err.Error(), "--ipc-socket") {
		t.Fatalf("unreachable socket: %v", err)
	}
	// A deployment then fails with that reason.
	fake.put("fleet", d.DocumentKey(), deploymentDoc("d1"))
	if err := d.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := readStatus(t, fake, d); st.Status != "FAILED" || !strings.Contains(st.Reason, "--ipc-socket") {
		t.Fatalf("status %+v", st)
	}
}

// A download that fails (the artifact is not there yet) is retried with the
// same document; a digest mismatch is not.
func TestDeployerRetriesDownload(t *testing.T) {
	fake := &fakeS3{objects: map[string][]byte{}}
	d := testDeployer(t, fake)
	defer func() {
		if d.current != nil {
			stopAll(d.current.sups)
		}
	}()
	ctx := context.Background()
	script := []byte("#!/bin/sh\nexec sleep 60\n")
	fake.put("fleet", d.DocumentKey(), deploymentDoc("d1", scriptComponent("c", "1", "s3://art/run.sh", digest(script))))
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if st := readStatus(t, fake, d); st.Status != "FAILED" || !strings.Contains(st.Reason, "retrying") {
		t.Fatalf("status %+v", st)
	}
	fake.put("art", "run.sh", script)
	if err := d.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if st := readStatus(t, fake, d); st.Status != "SUCCEEDED" {
		t.Fatalf("status %+v", st)
	}
}
