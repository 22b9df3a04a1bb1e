package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"convoy/test/e2e/harness"
)

var (
	credsListenRE = regexp.MustCompile(`msg="container credentials endpoint" listen=(127\.0\.0\.1:\d+) `)
	relativeURIRE = regexp.MustCompile(`^/v2/credentials/[0-9a-f]{32,}$`)
)

// containerCredentials checks, while training job job runs, what its
// container was given for credentials: no key in its environment
// (/proc/<pid>/environ of the container's process), and a relative URI at
// the container credentials endpoint whose answer the real clients —
// boto3, both aws CLIs and the Go SDK — take as the role's assumed-role
// session (through AWS_CONTAINER_CREDENTIALS_FULL_URI on convoy's loopback
// listener, which the executor forwards 169.254.170.2:80 to). It returns
// that full URI, to check that it is revoked when the job ends.
func containerCredentials(t *testing.T, c *harness.Convoy, job, roleARN string) string {
	t.Helper()
	full := credentialsURL(t, c, job)
	rel := full[strings.Index(full, "/v2/"):]
	account := strings.Split(roleARN, ":")[4]
	role := roleARN[strings.LastIndex(roleARN, "/")+1:]
	want := "arn:aws:sts::" + account + ":assumed-role/" + role + "/" + job
	env := []string{"!AWS_ACCESS_KEY_ID", "!AWS_SECRET_ACCESS_KEY", "AWS_CONTAINER_CREDENTIALS_FULL_URI=" + full}

	for name, cli := range harness.AWSCLIs(t) {
		if arn := str(awsJSON(t, c, cli, []string{"sts", "get-caller-identity"}, env...), "Arn"); arn != want {
			t.Errorf("%s with the container's credentials: caller %q, want %q", name, arn, want)
		}
	}
	py := exec.Command(harness.Tool(t, "python3"), "-c", `
import os, boto3
print(boto3.client("sts", endpoint_url=os.environ["CONVOY_ENDPOINT"]).get_caller_identity()["Arn"])
`)
	py.Env = c.ClientEnv(env...)
	if out, err := py.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("boto3 with the container's credentials: %v\n%s", err, out)
	}

	// The Go SDK's default chain, from the environment alone.
	for _, kv := range c.ClientEnv(env...) {
		if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, v)
		}
	}
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"} {
		t.Setenv(k, "") // empty is unset for the SDK
	}
	ctx := harness.Context(t)
	cfg, err := config.LoadDefaultConfig(ctx, config.WithBaseEndpoint(c.Endpoint), config.WithRetryMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil || aws.ToString(out.Arn) != want {
		t.Errorf("Go SDK with the container's credentials: %v %v", out, err)
	}
	if creds, err := cfg.Credentials.Retrieve(ctx); err != nil || !creds.CanExpire || time.Until(creds.Expires) > time.Hour+time.Minute {
		t.Errorf("Go SDK credentials: expire %v (can expire %t), %v; want within the hour", creds.Expires, creds.CanExpire, err)
	}

	// The id is a capability: convoy never logs it.
	if id := strings.TrimPrefix(rel, "/v2/credentials/"); strings.Contains(c.Logs(), id) {
		t.Error("convoy's log holds a container credentials id")
	}
	return full
}

// credentialsURL checks the environment of the first host of a running
// job — the credentials endpoint's relative URI and no keys — and returns
// the URI's full form on convoy's loopback listener.
func credentialsURL(t *testing.T, c *harness.Convoy, job string) string {
	t.Helper()
	m := credsListenRE.FindStringSubmatch(c.Logs())
	if m == nil {
		t.Fatalf("convoy did not log its container credentials endpoint:\n%s", c.Logs())
	}
	environ := containerEnviron(t, c, job)
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		if _, ok := environ[k]; ok {
			t.Errorf("the container's environment holds %s", k)
		}
	}
	rel := environ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]
	if !relativeURIRE.MatchString(rel) {
		t.Fatalf("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is %q", rel)
	}
	if environ["AWS_ENDPOINT_URL"] == "" || environ["AWS_REGION"] == "" || environ["AWS_CA_BUNDLE"] == "" {
		t.Errorf("the container lacks the endpoint, region or CA variables")
	}
	return "http://" + m[1] + rel
}

// fetchCredentials GETs a container credentials URI that must answer.
func fetchCredentials(t *testing.T, full string) map[string]string {
	t.Helper()
	resp, err := http.Get(full)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var creds map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&creds); err != nil || resp.StatusCode != http.StatusOK ||
		resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET container credentials: %s %v", resp.Status, err)
	}
	return creds
}

// containerEnviron reads the environment of the first host of a running
// job, as the kernel holds it for the container's process.
func containerEnviron(t *testing.T, c *harness.Convoy, job string) map[string]string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(c.DataDir, "executor", "runc"), "list", "--format", "json").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	var containers []struct {
		ID  string `json:"id"`
		Pid int    `json:"pid"`
	}
	if err := json.Unmarshal(out, &containers); err != nil {
		t.Fatalf("runc list: %v: %s", err, out)
	}
	for _, ct := range containers {
		if !strings.HasPrefix(ct.ID, job+".") || ct.Pid == 0 {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ct.Pid), "environ"))
		if err != nil {
			t.Fatal(err)
		}
		env := map[string]string{}
		for _, kv := range bytes.Split(b, []byte{0}) {
			if k, v, ok := strings.Cut(string(kv), "="); ok {
				env[k] = v
			}
		}
		return env
	}
	t.Fatalf("no running container of job %s in %s", job, out)
	return nil
}

// revoked checks that a container credentials URI answers 404.
func revoked(t *testing.T, full string) {
	t.Helper()
	resp, err := http.Get(full)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || bytes.Contains(body, []byte("SecretAccessKey")) {
		t.Errorf("the credentials of an ended job: %d %s", resp.StatusCode, body)
	}
}
