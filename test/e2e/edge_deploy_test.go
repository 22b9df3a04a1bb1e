package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// Deployments with real clients: the aws CLI puts a component (a shell
// script that publishes over the IPC socket with mosquitto_pub) and a
// deployment document into a real cloud convoy; the edge fetches both over
// HTTPS and runs the component as nobody, without the core's environment;
// a device receives its message over mTLS. A second document with a wrong
// digest fails and leaves the first component running.
func TestEdgeDeployments(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs components as another user: needs root")
	}
	sub := harness.Tool(t, "mosquitto_sub")
	harness.Tool(t, "mosquitto_pub") // the component runs it
	cli := harness.Tool(t, "aws")
	bin := harness.Binary(t)
	ctx := harness.Context(t)
	const nobody = 65534

	cloud := harness.Start(t, harness.Options{Listen: freeAddr(t)})
	client := cloud.S3(t)
	if _, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("fleet")}); err != nil {
		t.Fatal(err)
	}
	envData, err := os.ReadFile(filepath.Join(cloud.DataDir, "convoy.env"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	cloudEnv := writeFile(t, filepath.Join(tmp, "cloud.env"), envData)
	// DATA stays 0700; the component's directory and socket live where
	// nobody can traverse.
	shared := filepath.Join(tmp, "shared")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, certs := filepath.Join(tmp, "edge"), filepath.Join(tmp, "certs")
	runCmd(t, bin, "edge", "init", "--data", data, "--name", "core1")
	runCmd(t, bin, "edge", "devices", "add", "d1", "--data", data, "--out", certs)

	// The core's environment holds a secret; no component may see it.
	const secret = "EDGE-DEPLOY-SECRET-CANARY"
	t.Setenv("AWS_SECRET_ACCESS_KEY", secret)
	edgeAddr := freeAddr(t)
	_, edgePort, _ := strings.Cut(edgeAddr, ":")
	edge := startEdge(t, bin, data, []string{"edge", "run", "--data", data, "--listen", edgeAddr,
		"--cloud-env", cloudEnv, "--bucket", "fleet", "--log-format", "text",
		"--deploy-poll", "200ms", "--deploy-settle", "1s", "--component-stop-grace", "2s",
		"--component-uid", fmt.Sprint(nobody), "--component-gid", fmt.Sprint(nobody),
		"--deploy-dir", filepath.Join(shared, "deployments"), "--ipc-socket", filepath.Join(shared, "ipc.sock")})

	script := []byte(`#!/bin/sh
while :; do
  mosquitto_pub --unix "$CONVOY_EDGE_IPC" -t broadcast/hello -m "hello from $CONVOY_EDGE_COMPONENT" -r -q 1 || exit 1
  sleep 1
done
`)
	upload := func(key string, body []byte) {
		t.Helper()
		f := writeFile(t, filepath.Join(t.TempDir(), "upload"), body)
		if r := cloud.AWS(t, cli, []string{"s3", "cp", f, "s3://fleet/" + key}); r.Err != nil {
			t.Fatalf("aws s3 cp %s: %v\n%s", key, r.Err, r.Stderr)
		}
	}
	document := func(id, version, key, digest string) []byte {
		b, _ := json.Marshal(map[string]any{"DeploymentId": id, "Components": []any{map[string]any{
			"ComponentName": "hello", "ComponentVersion": version,
			"Artifacts":   []any{map[string]any{"Uri": "s3://fleet/" + key, "Digest": digest, "Algorithm": "SHA-256", "Unarchive": "NONE"}},
			"Lifecycle":   map[string]any{"Run": []string{"hello.sh"}},
			"Environment": map[string]string{"GREETING": "hi"},
		}}})
		return b
	}
	sum := sha256.Sum256(script)
	upload("artifacts/hello/1.0.0/hello.sh", script)
	upload("edge/deployments/core1.json", document("dep-1", "1.0.0", "artifacts/hello/1.0.0/hello.sh", base64.StdEncoding.EncodeToString(sum[:])))

	// A device on broadcast/# hears the component.
	out, err := exec.Command(sub, "--cafile", filepath.Join(certs, "ca.crt"), "--cert", filepath.Join(certs, "d1.crt"),
		"--key", filepath.Join(certs, "d1.key"), "-h", "127.0.0.1", "-p", edgePort, "-i", "d1",
		"-t", "broadcast/#", "-v", "-C", "1", "-W", "20").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "broadcast/hello hello from hello" {
		t.Fatalf("device's subscriber: %v\n%s", err, out)
	}
	st := waitStatus(t, client, "dep-1")
	if st.Status != "SUCCEEDED" || len(st.Components) != 1 || st.Components[0].State != "RUNNING" || st.Components[0].ComponentName != "hello" {
		t.Fatalf("status of dep-1: %+v", st)
	}

	pid := componentPid(t, edge.cmd.Process.Pid, "hello")
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:") {
			for _, id := range f[1:] {
				if id != fmt.Sprint(nobody) {
					t.Fatalf("component %s", line)
				}
			}
		}
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	edgeEnv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", edge.cmd.Process.Pid))
	if !bytes.Contains(edgeEnv, []byte(secret)) {
		t.Fatal("the edge's environment lacks the secret: the next check proves nothing")
	}
	if bytes.Contains(env, []byte("AWS_SECRET_ACCESS_KEY")) || bytes.Contains(env, []byte(secret)) || !bytes.Contains(env, []byte("GREETING=hi\x00")) {
		t.Fatalf("component environment: %q", env)
	}

	// A wrong digest: FAILED, naming the artifact; the first component runs on.
	upload("artifacts/hello/2.0.0/hello.sh", script)
	wrong := sha256.Sum256([]byte("not the script"))
	upload("edge/deployments/core1.json", document("dep-2", "2.0.0", "artifacts/hello/2.0.0/hello.sh", base64.StdEncoding.EncodeToString(wrong[:])))
	st = waitStatus(t, client, "dep-2")
	if st.Status != "FAILED" || !strings.Contains(st.Reason, "s3://fleet/artifacts/hello/2.0.0/hello.sh") || !strings.Contains(st.Reason, "digest mismatch") {
		t.Fatalf("status of dep-2: %+v", st)
	}
	if len(st.Components) != 1 || st.Components[0].ComponentVersion != "1.0.0" || st.Components[0].State != "RUNNING" {
		t.Fatalf("components after dep-2: %+v", st.Components)
	}
	if got := componentPid(t, edge.cmd.Process.Pid, "hello"); got != pid {
		t.Fatalf("the component was restarted (pid %d, was %d)", got, pid)
	}
	if m, _ := filepath.Glob(filepath.Join(shared, "deployments", "components", "hello", "2.0.0-*")); len(m) != 0 {
		t.Fatalf("dep-2 was installed: %v", m)
	}
}

type edgeDeploymentStatus struct {
	DeploymentId, Status, Reason string
	Components                   []struct {
		ComponentName, ComponentVersion, State string
		Restarts                               int
	}
}

func waitStatus(t *testing.T, client *s3.Client, id string) edgeDeploymentStatus {
	t.Helper()
	var st edgeDeploymentStatus
	waitFor(t, 20*time.Second, "the status of "+id, func() bool {
		out, err := client.GetObject(t.Context(), &s3.GetObjectInput{Bucket: aws.String("fleet"), Key: aws.String("edge/deployments/core1.status.json")})
		if err != nil {
			return false
		}
		defer out.Body.Close()
		st = edgeDeploymentStatus{}
		return json.NewDecoder(out.Body).Decode(&st) == nil && st.DeploymentId == id
	})
	return st
}

// componentPid finds the child of the edge that runs component name.
func componentPid(t *testing.T, edgePid int, name string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || !strings.Contains(string(status), fmt.Sprintf("\nPPid:\t%d\n", edgePid)) {
			continue
		}
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if bytes.Contains(env, []byte("CONVOY_EDGE_COMPONENT="+name+"\x00")) {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		t.Fatalf("processes of component %s: %v", name, found)
	}
	return found[0]
}
