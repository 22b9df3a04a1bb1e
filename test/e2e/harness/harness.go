// Package harness starts the real convoy binary for end-to-end tests and
// benchmarks and hands back what a client needs to reach it: the endpoint,
// the CA bundle and the admin credentials from convoy.env. It is the one way
// tests start convoy.
package harness

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"convoy/internal/client"
	"convoy/internal/tlsconf"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds convoy once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "convoy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "convoy")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/convoy")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/convoy: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the convoy module")
	}
	return filepath.Dir(mod), nil
}

// Options say how to start convoy.
type Options struct {
	// Args are extra flags for `convoy up`.
	Args []string
	// DataDir reuses a data directory (restart tests); "" makes a new one.
	DataDir string
	// Env is added to the process environment (GODEBUG=…).
	Env []string
	// Listen overrides the default 127.0.0.1:0.
	Listen string
}

// Convoy is a running convoy process.
type Convoy struct {
	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{}
	exitErr error
	logs    *SyncBuffer

	DataDir  string
	Env      map[string]string
	Endpoint string // https://host:port
	Addr     string // host:port
	CABundle string
}

// Start runs `convoy up` and waits until it has written convoy.env. The
// process is stopped when the test ends.
func Start(t testing.TB, o Options) *Convoy {
	t.Helper()
	c := Launch(t, o)
	if err := c.WaitReady(90 * time.Second); err != nil {
		t.Fatal(err)
	}
	return c
}

// Launch starts `convoy up` without waiting for it to be ready.
func Launch(t testing.TB, o Options) *Convoy {
	t.Helper()
	bin := Binary(t)
	if o.DataDir == "" {
		o.DataDir = filepath.Join(t.TempDir(), "data")
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	args := append([]string{"up", "--data", o.DataDir, "--listen", o.Listen, "--log-format", "text"}, o.Args...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	logs := &SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start convoy: %v", err)
	}
	c := &Convoy{t: t, cmd: cmd, done: make(chan struct{}), logs: logs, DataDir: o.DataDir}
	go func() { c.exitErr = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Kill()
		if t.Failed() {
			t.Logf("convoy output:\n%s", c.Logs())
		}
	})
	return c
}

// WaitReady waits for convoy.env and loads it.
func (c *Convoy) WaitReady(timeout time.Duration) error {
	envPath := filepath.Join(c.DataDir, "convoy.env")
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-c.done:
			return fmt.Errorf("convoy exited before it was ready (%v):\n%s", c.exitErr, c.Logs())
		default:
		}
		// convoy.env names the PID that wrote it: a file left by an earlier
		// process is not this one being ready.
		if env, err := ParseEnvFile(envPath); err == nil && env["CONVOY_PID"] == strconv.Itoa(c.cmd.Process.Pid) {
			c.Env = env
			c.Endpoint = env["CONVOY_ENDPOINT"]
			u, err := url.Parse(c.Endpoint)
			if err != nil {
				return err
			}
			c.Addr = u.Host
			c.CABundle = env["AWS_CA_BUNDLE"]
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("convoy did not write %s within %s:\n%s", envPath, timeout, c.Logs())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// ParseEnvFile reads the `export NAME='value'` lines of convoy.env.
func ParseEnvFile(path string) (map[string]string, error) { return client.ParseEnvFile(path) }

// Logs returns what convoy has printed so far.
func (c *Convoy) Logs() string { return c.logs.String() }

// Stop sends SIGTERM and waits; it returns convoy's exit error (nil for 0).
func (c *Convoy) Stop() error {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return c.exitErr
	case <-time.After(60 * time.Second):
		c.Kill()
		return fmt.Errorf("convoy did not stop within 60s of SIGTERM")
	}
}

// Kill stops convoy with SIGKILL (a crash) and waits for it to be gone.
func (c *Convoy) Kill() {
	c.cmd.Process.Kill()
	<-c.done
}

// Wait waits for the process to end by itself and returns its exit error.
func (c *Convoy) Wait(timeout time.Duration) error {
	select {
	case <-c.done:
		return c.exitErr
	case <-time.After(timeout):
		return fmt.Errorf("convoy still running after %s", timeout)
	}
}

// PeakRSS returns the process's peak resident memory (VmHWM) in bytes.
func (c *Convoy) PeakRSS(t testing.TB) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// Exited reports whether the process has ended.
func (c *Convoy) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// CAPool is the CA that convoy.env names.
func (c *Convoy) CAPool(t testing.TB) *x509.CertPool {
	t.Helper()
	pemBytes, err := os.ReadFile(c.CABundle)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatalf("no certificate in %s", c.CABundle)
	}
	return pool
}

// HTTPClient returns an HTTPS client that trusts convoy's CA, using profile p.
func (c *Convoy) HTTPClient(t testing.TB, p tlsconf.Profile) *http.Client {
	host, _, _ := net.SplitHostPort(c.Addr)
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(p, c.CAPool(t), host), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// ClientEnv is the environment for a CLI client talking to convoy: the
// caller's, with convoy.env on top and no shared AWS config. Each extra
// "NAME=value" is added; "!NAME" removes NAME (an empty AWS_CA_BUNDLE is not
// the same as none: botocore then skips verification).
func (c *Convoy) ClientEnv(extra ...string) []string {
	drop := map[string]bool{}
	var add []string
	for _, e := range extra {
		if name, ok := strings.CutPrefix(e, "!"); ok {
			drop[name] = true
		} else {
			add = append(add, e)
		}
	}
	env := []string{"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null", "AWS_PAGER=", "AWS_EC2_METADATA_DISABLED=true"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	for k, v := range c.Env {
		if !drop[k] {
			env = append(env, k+"="+v)
		}
	}
	return append(env, add...)
}

// Result is what a command printed and how it ended.
type Result struct {
	Stdout, Stderr string
	Err            error
}

// AWS runs an aws CLI (the path of its binary is cli) against convoy.
func (c *Convoy) AWS(t testing.TB, cli string, args []string, extraEnv ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	full := append([]string{"--endpoint-url", c.Endpoint}, args...)
	cmd := exec.CommandContext(ctx, cli, full...)
	cmd.Env = c.ClientEnv(extraEnv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// Tool returns the path of an external program the e2e tests need and fails
// the test, saying how to get it, when it is missing.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run ./scripts/test.sh, which installs every e2e tool (or apt-get install it)", name)
	}
	return p
}

// AWSCLIs returns the aws CLIs to test against: v1 (pip, on PATH) and v2
// (Debian's /usr/bin/aws) when they differ.
func AWSCLIs(t testing.TB) map[string]string {
	t.Helper()
	clis := map[string]string{}
	for _, p := range []string{Tool(t, "aws"), "/usr/bin/aws"} {
		out, err := exec.Command(p, "--version").CombinedOutput()
		if err != nil {
			continue
		}
		v := strings.Fields(string(out))
		if len(v) > 0 {
			clis[v[0]] = p // "aws-cli/1.45.11" or "aws-cli/2.9.19"
		}
	}
	if len(clis) == 0 {
		t.Fatal("no working aws CLI")
	}
	return clis
}

// SyncBuffer is a bytes.Buffer that a process's output and a test may use
// at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
