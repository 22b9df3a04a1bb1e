package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/executor"
	"convoy/test/e2e/harness"
)

// endpointSetup is a convoy with a trained model and a role that may read it.
type endpointSetup struct {
	c       *harness.Convoy
	cli     string // aws CLI v2 when installed, else v1
	py      string
	role    string // the models' role: may read the model
	trainer string // the training job's role: may write models, not read them
	model   string // s3:// of the trained model.tar.gz
	// digest is what the serving container reports for that model: the
	// first 8 bytes of sha256(model.txt), in hex.
	digest string
	key    string // the KMS key of the models and of cfg-main's volumes
}

// setupEndpoints starts convoy, trains a model with the trainer image and
// makes a role that may read it.
func setupEndpoints(t *testing.T) *endpointSetup {
	t.Helper()
	clis := harness.AWSCLIs(t)
	e := &endpointSetup{py: harness.Tool(t, "python3"), cli: harness.Tool(t, "aws")}
	for name, p := range clis {
		if strings.HasPrefix(name, "aws-cli/2") {
			e.cli = p
		}
	}
	e.c = harness.Start(t, harness.Options{Args: []string{"--training-stop-grace", "5s", "--endpoint-health-interval", "500ms"}})
	// A graceful stop stops the endpoints' containers before the data
	// directory is removed, whatever the test left running.
	t.Cleanup(func() { e.c.Stop() })
	c, cli := e.c, e.cli
	ctx := harness.Context(t)
	jobsReady(t, c, cli, "input", "output")
	if _, err := c.S3(t).PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String("train/a.csv"), Body: strings.NewReader("1,2,3\n")}); err != nil {
		t.Fatal(err)
	}
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "models"}), "KeyMetadata", "Arn")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	trainer := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
	e.trainer = trainer
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "trainer", "--policy-name", "data", "--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)})
	// The model's role reads the model and nothing else.
	e.role = str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "model", "--assume-role-policy-document", trust}), "Role", "Arn")
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "model", "--policy-name", "model", "--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::output/models/*"},
		{"Effect":"Allow","Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":%q}]}`, key)})
	e.key = key

	job := trainingJob("train-model", trainer, key, 1, 300, map[string]string{"mode": "train",
		"probe_allowed": "s3://input/train/a.csv", "probe_denied": "s3://input/none"})
	file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
	awsJSON(t, c, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		d := awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", "train-model"})
		if s := str(d, "TrainingJobStatus"); s == "Completed" {
			e.model = str(d, "ModelArtifacts", "S3ModelArtifacts")
			break
		} else if s != "InProgress" || time.Now().After(deadline) {
			t.Fatalf("training job: %v", d)
		}
		time.Sleep(500 * time.Millisecond)
	}
	local := filepath.Join(t.TempDir(), "model.tar.gz")
	if r := c.AWS(t, cli, []string{"s3", "cp", e.model, local}); r.Err != nil {
		t.Fatalf("s3 cp: %v\n%s", r.Err, r.Stderr)
	}
	sum := sha256.Sum256([]byte(untar(t, local)["model.txt"]))
	e.digest = hex.EncodeToString(sum[:8])
	return e
}

// createModel makes a model of the trained model data with the trainer
// image serving it; env is its Environment.
func (e *endpointSetup) createModel(t *testing.T, name string, env map[string]string) {
	t.Helper()
	e.createModelAs(t, name, e.role, env)
}

func (e *endpointSetup) createModelWithRole(t *testing.T, name, role string) {
	t.Helper()
	e.createModelAs(t, name, role, nil)
}

func (e *endpointSetup) createModelAs(t *testing.T, name, role string, env map[string]string) {
	t.Helper()
	container := map[string]any{"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1", "ModelDataUrl": e.model}
	if env != nil {
		container["Environment"] = env
	}
	m := map[string]any{"ModelName": name, "ExecutionRoleArn": role, "PrimaryContainer": container}
	file := writeFile(t, filepath.Join(t.TempDir(), "model.json"), mustJSON(m))
	out := awsJSON(t, e.c, e.cli, []string{"sagemaker", "create-model", "--cli-input-json", "file://" + file})
	if !strings.HasSuffix(str(out, "ModelArn"), ":model/"+name) {
		t.Fatalf("create-model: %v", out)
	}
}

// createConfig makes an endpoint configuration; each variant is
// "name=model:weight".
func (e *endpointSetup) createConfig(t *testing.T, name string, extra map[string]any, variants ...string) {
	t.Helper()
	var vs []any
	top := map[string]any{"EndpointConfigName": name}
	if k, ok := extra["KmsKeyId"]; ok {
		top["KmsKeyId"] = k // the config's, not a variant's
		extra = maps.Clone(extra)
		delete(extra, "KmsKeyId")
	}
	for _, v := range variants {
		vname, rest, _ := strings.Cut(v, "=")
		model, weight, _ := strings.Cut(rest, ":")
		var w float64
		fmt.Sscan(weight, &w)
		pv := map[string]any{"VariantName": vname, "ModelName": model, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large", "InitialVariantWeight": w}
		for k, x := range extra {
			pv[k] = x
		}
		vs = append(vs, pv)
	}
	top["ProductionVariants"] = vs
	file := writeFile(t, filepath.Join(t.TempDir(), "config.json"), mustJSON(top))
	awsJSON(t, e.c, e.cli, []string{"sagemaker", "create-endpoint-config", "--cli-input-json", "file://" + file})
}

func (e *endpointSetup) describe(t *testing.T, name string) map[string]any {
	return awsJSON(t, e.c, e.cli, []string{"sagemaker", "describe-endpoint", "--endpoint-name", name})
}

// waitEndpoint polls DescribeEndpoint until done says so.
func (e *endpointSetup) waitEndpoint(t *testing.T, name string, done func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		d := e.describe(t, name)
		if done(d) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %s: %v", name, d)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func endpointStatus(want string) func(map[string]any) bool {
	return func(d map[string]any) bool { return str(d, "EndpointStatus") == want }
}

// waitDeleted polls until DescribeEndpoint says the endpoint does not exist.
func (e *endpointSetup) waitDeleted(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := e.c.AWS(t, e.cli, []string{"sagemaker", "describe-endpoint", "--endpoint-name", name}, "AWS_MAX_ATTEMPTS=1")
		if r.Err != nil && strings.Contains(r.Stderr, "(ValidationException)") && strings.Contains(r.Stderr, "Could not find endpoint") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoint %s not deleted: %v %s %s", name, r.Err, r.Stdout, r.Stderr)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// containers lists the endpoint instances' containers that run, from
// their log streams (<variant>/i-<hex>) and runc (ep-<hex>.algo-1).
func (e *endpointSetup) containers(t *testing.T, endpoint string) []string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(e.c.DataDir, "executor", "runc"), "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	running := map[string]bool{}
	for _, id := range strings.Fields(string(out)) {
		running[id] = true
	}
	streams := awsJSON(t, e.c, e.cli, []string{"logs", "describe-log-streams", "--log-group-name", "/aws/sagemaker/Endpoints/" + endpoint})
	var ids []string
	for _, s := range streams["logStreams"].([]any) {
		_, inst, _ := strings.Cut(s.(map[string]any)["logStreamName"].(string), "/")
		if id := "ep-" + strings.TrimPrefix(inst, "i-") + ".algo-1"; running[id] {
			ids = append(ids, id)
		}
	}
	return ids
}

// containerAddr is the eth0 address of the runc container id, read in its
// network namespace.
func (e *endpointSetup) containerAddr(t *testing.T, id string) string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(e.c.DataDir, "executor", "runc"), "state", id).Output()
	if err != nil {
		t.Fatalf("runc state %s: %v", id, err)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal(out, &st); err != nil || st.Pid == 0 {
		t.Fatalf("runc state %s: %q %v", id, out, err)
	}
	out, err = exec.Command("nsenter", "-t", fmt.Sprint(st.Pid), "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0").Output()
	if err != nil {
		t.Fatalf("address of %s: %v", id, err)
	}
	for f := range strings.FieldsSeq(string(out)) {
		if a, _, ok := strings.Cut(f, "/"); ok && net.ParseIP(a) != nil {
			return a
		}
	}
	t.Fatalf("no address of %s in %q", id, out)
	return ""
}

// py runs a boto3 script with convoy's client environment and decodes the
// JSON it prints last.
func (e *endpointSetup) python(t *testing.T, script string, args ...string) map[string]any {
	t.Helper()
	cmd := exec.Command(e.py, append([]string{"-c", script}, args...)...)
	cmd.Env = e.c.ClientEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s\n%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatalf("python printed %q: %v\n%s", out, err, stderr.String())
	}
	return m
}

// pyRuntime starts the boto3 scripts: a sagemaker-runtime client that
// never retries, so that every failure is seen.
const pyRuntime = `
import os, sys, json, time, boto3, botocore.config, botocore.exceptions
cfg = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})
rt = boto3.client("sagemaker-runtime", endpoint_url=os.environ["CONVOY_ENDPOINT"], config=cfg)
`

// Endpoints run for real: a model trained by a training job is deployed
// with CreateModel, CreateEndpointConfig and CreateEndpoint, served by the
// trainer image in "serve" mode in runc containers, and invoked through
// convoy's runtime router over TLS by both aws CLIs and boto3.
func TestEndpointsEndToEnd(t *testing.T) {
	e := setupEndpoints(t)
	c, cli := e.c, e.cli
	started := time.Now()

	e.createModel(t, "m-main", map[string]string{"SERVE_TAG": "main"})
	e.createModel(t, "m-a", map[string]string{"SERVE_TAG": "a"})
	e.createModel(t, "m-b", map[string]string{"SERVE_TAG": "b"})
	e.createModel(t, "m-c", map[string]string{"SERVE_TAG": "c"})
	e.createModel(t, "m-exit", map[string]string{"SERVE_MODE": "exit"})
	e.createModel(t, "m-loading", map[string]string{"SERVE_MODE": "unhealthy"})
	e.createModelWithRole(t, "m-denied", e.trainer) // may write models, not read them
	e.createConfig(t, "cfg-main", map[string]any{"KmsKeyId": e.key}, "primary=m-main:1")
	e.createConfig(t, "cfg-split", nil, "a=m-a:0.8", "b=m-b:0.2")
	e.createConfig(t, "cfg-next", nil, "c=m-c:1")
	e.createConfig(t, "cfg-exit", nil, "primary=m-exit:1")
	e.createConfig(t, "cfg-denied", nil, "primary=m-denied:1")
	e.createConfig(t, "cfg-loading", map[string]any{"ContainerStartupHealthCheckTimeoutInSeconds": 600}, "primary=m-loading:1")
	for name, cfg := range map[string]string{"ep-main": "cfg-main", "ep-split": "cfg-split", "ep-exit": "cfg-exit", "ep-loading": "cfg-loading", "ep-denied": "cfg-denied"} {
		out := awsJSON(t, c, cli, []string{"sagemaker", "create-endpoint", "--endpoint-name", name, "--endpoint-config-name", cfg})
		if !strings.HasSuffix(str(out, "EndpointArn"), ":endpoint/"+name) {
			t.Fatalf("create-endpoint: %v", out)
		}
	}

	t.Run("not in service", func(t *testing.T) {
		if d := e.describe(t, "ep-loading"); str(d, "EndpointStatus") != "Creating" {
			t.Fatalf("ep-loading: %v", d)
		}
		awsFails(t, c, cli, "ValidationError", []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-loading",
			"--body", "fileb://" + writeFile(t, filepath.Join(t.TempDir(), "in"), []byte("1\n")), filepath.Join(t.TempDir(), "out")})
	})

	t.Run("wait endpoint-in-service", func(t *testing.T) {
		// The waiter polls every 30 s: this takes 30 s unless ep-main is
		// already in service.
		if r := c.AWS(t, cli, []string{"sagemaker", "wait", "endpoint-in-service", "--endpoint-name", "ep-main"}); r.Err != nil {
			t.Fatalf("wait: %v\n%s", r.Err, r.Stderr)
		}
		d := e.describe(t, "ep-main")
		v := d["ProductionVariants"].([]any)[0].(map[string]any)
		if str(d, "EndpointStatus") != "InService" || v["CurrentInstanceCount"] != 1.0 || v["CurrentWeight"] != 1.0 ||
			!strings.Contains(fmt.Sprint(v["DeployedImages"]), "trainer@sha256:") {
			t.Fatalf("ep-main: %v", d)
		}
		// The unpacked model is on the variant's encrypted volume (keyed by
		// the config's KmsKeyId): readable through its mount, nowhere in
		// plaintext on disk.
		views, _ := filepath.Glob(filepath.Join(c.DataDir, "endpoints", "ep-main", "deploy-*", "primary"))
		if len(views) != 1 {
			t.Fatalf("volume views of ep-main: %v", views)
		}
		if b, err := os.ReadFile(filepath.Join(views[0], "model", "model.txt")); err != nil || !strings.Contains(string(b), "train-mode=File") {
			t.Fatalf("model through the volume: %v %q", err, b)
		}
		// Every running variant's plaintext view is a mount to skip.
		all, _ := filepath.Glob(filepath.Join(c.DataDir, "endpoints", "*", "deploy-*", "*"))
		var skip []string
		for _, p := range all {
			if !strings.HasSuffix(p, ".enc") && !strings.HasSuffix(p, ".img") {
				skip = append(skip, p)
			}
		}
		if hits := grepData(t, c.DataDir, "train-mode=File content=text/csv", skip...); len(hits) > 0 {
			t.Fatalf("model data in plaintext at rest: %v", hits)
		}
	})

	t.Run("model data access denied", func(t *testing.T) {
		d := e.waitEndpoint(t, "ep-denied", endpointStatus("Failed"))
		if r := str(d, "FailureReason"); !strings.Contains(r, "Failed to download model data") || !strings.Contains(r, "AccessDenied") ||
			!strings.Contains(r, e.trainer) {
			t.Fatalf("ep-denied: %v", d)
		}
	})

	t.Run("container exits", func(t *testing.T) {
		d := e.waitEndpoint(t, "ep-exit", endpointStatus("Failed"))
		if r := str(d, "FailureReason"); !strings.Contains(r, "exited with exit code 3") || !strings.Contains(r, "model refused to load") {
			t.Fatalf("ep-exit: %v", d)
		}
	})

	in := writeFile(t, filepath.Join(t.TempDir(), "in.csv"), []byte("1,2\n3,4\n5,6\n"))
	for name, p := range harness.AWSCLIs(t) {
		t.Run("invoke "+name, func(t *testing.T) {
			outFile := filepath.Join(t.TempDir(), "out.json")
			out := awsJSON(t, c, p, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in,
				"--content-type", "text/csv", "--custom-attributes", "trace=42", outFile})
			if str(out, "InvokedProductionVariant") != "primary" || str(out, "ContentType") != "application/json" || str(out, "CustomAttributes") != "seen=trace=42" {
				t.Errorf("invoke-endpoint: %v", out)
			}
			b, _ := os.ReadFile(outFile)
			var pred map[string]any
			json.Unmarshal(b, &pred)
			if pred["model"] != e.digest || pred["rows"] != 3.0 || pred["tag"] != "main" {
				t.Fatalf("prediction %s, want model %s from the trained model.txt", b, e.digest)
			}
			// The container refuses the content type: ModelError.
			r := c.AWS(t, p, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in,
				"--content-type", "application/x-image", outFile}, "AWS_MAX_ATTEMPTS=1")
			if r.Err == nil || !strings.Contains(r.Stderr, "(ModelError)") || !strings.Contains(r.Stderr, "Received client error (415) from primary") {
				t.Fatalf("wrong content type: %v\n%s", r.Err, r.Stderr)
			}
		})
	}

	t.Run("invoke boto3", func(t *testing.T) {
		out := e.python(t, pyRuntime+`
r = rt.invoke_endpoint(EndpointName="ep-main", ContentType="text/csv", Body=b"1\n2\n", CustomAttributes="k=v", InferenceId="inf-1")
res = {"variant": r["InvokedProductionVariant"], "attrs": r["CustomAttributes"], "body": json.loads(r["Body"].read())}
try:
    rt.invoke_endpoint(EndpointName="ep-main", ContentType="text/csv", Body=b"boom")
except botocore.exceptions.ClientError as e:
    res["error"] = {k: e.response.get(k) for k in ("OriginalStatusCode", "OriginalMessage", "LogStreamArn")}
    res["error"]["code"] = e.response["Error"]["Code"]
    res["error"]["status"] = e.response["ResponseMetadata"]["HTTPStatusCode"]
s = rt.invoke_endpoint_with_response_stream(EndpointName="ep-main", ContentType="text/csv", Accept="application/jsonlines", Body=b"1\n2\n3\n")
parts = [e["PayloadPart"]["Bytes"].decode() for e in s["Body"]]
res["stream"] = {"variant": s["InvokedProductionVariant"], "type": s["ContentType"], "parts": len(parts), "text": "".join(parts)}
print(json.dumps(res))
`)
		body, _ := out["body"].(map[string]any)
		if out["variant"] != "primary" || out["attrs"] != "seen=k=v" || body["model"] != e.digest || body["rows"] != 2.0 {
			t.Errorf("boto3 invoke_endpoint: %v", out)
		}
		st, _ := out["stream"].(map[string]any)
		want := fmt.Sprintf("{\"model\":%q,\"row\":0,\"input\":\"1\"}\n{\"model\":%q,\"row\":1,\"input\":\"2\"}\n{\"model\":%q,\"row\":2,\"input\":\"3\"}\n", e.digest, e.digest, e.digest)
		if st["variant"] != "primary" || st["type"] != "application/jsonlines" || st["text"] != want {
			t.Errorf("boto3 invoke_endpoint_with_response_stream: %v", st)
		}
		er, _ := out["error"].(map[string]any)
		if er["code"] != "ModelError" || er["status"] != 424.0 || er["OriginalStatusCode"] != 500.0 || er["OriginalMessage"] != "model failure" ||
			!strings.Contains(fmt.Sprint(er["LogStreamArn"]), ":log-group:/aws/sagemaker/Endpoints/ep-main:log-stream:primary/i-") {
			t.Errorf("boto3 ModelError: %v", er)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		big := writeFile(t, filepath.Join(t.TempDir(), "big"), bytes.Repeat([]byte("1,2,3\n"), 7<<20/6))
		outFile := filepath.Join(t.TempDir(), "out")
		for _, tc := range []struct {
			args []string
			msg  string
		}{
			{[]string{"--endpoint-name", "ep-main", "--body", "fileb://" + big}, "exceeds the InvokeEndpoint maximum of 6291456 bytes"},
			{[]string{"--endpoint-name", "nope", "--body", "fileb://" + in}, "Endpoint nope of account"},
			{[]string{"--endpoint-name", "ep-loading", "--body", "fileb://" + in}, "is not in service"},
			{[]string{"--endpoint-name", "ep-main", "--body", "fileb://" + in, "--target-variant", "nope"}, "Variant nope not found"},
		} {
			r := c.AWS(t, cli, append(append([]string{"sagemaker-runtime", "invoke-endpoint"}, tc.args...), outFile), "AWS_MAX_ATTEMPTS=1")
			if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationError)") || !strings.Contains(r.Stderr, tc.msg) {
				t.Errorf("invoke %v: want ValidationError %q, got %v\n%s", tc.args, tc.msg, r.Err, r.Stderr)
			}
		}
		// A caller without sagemaker:InvokeEndpoint is refused.
		awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", "reader"})
		awsJSON(t, c, cli, []string{"iam", "attach-user-policy", "--user-name", "reader", "--policy-arn", "arn:aws:iam::aws:policy/ReadOnlyAccess"})
		k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", "reader"})
		awsFails(t, c, cli, "AccessDeniedException", []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in, outFile},
			creds(str(k, "AccessKey", "AccessKeyId"), str(k, "AccessKey", "SecretAccessKey"), "")...)
		// The router still serves.
		out := awsJSON(t, c, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in, "--content-type", "text/csv", outFile})
		if str(out, "InvokedProductionVariant") != "primary" {
			t.Fatalf("after bad input: %v", out)
		}
	})

	t.Run("logs", func(t *testing.T) {
		streams := awsJSON(t, c, cli, []string{"logs", "describe-log-streams", "--log-group-name", "/aws/sagemaker/Endpoints/ep-main"})
		list := streams["logStreams"].([]any)
		if len(list) != 1 {
			t.Fatalf("log streams: %v", streams)
		}
		name := list[0].(map[string]any)["logStreamName"].(string)
		ev := awsJSON(t, c, cli, []string{"logs", "get-log-events", "--log-group-name", "/aws/sagemaker/Endpoints/ep-main", "--log-stream-name", name, "--start-from-head"})
		if got := fmt.Sprint(ev["events"]); !strings.Contains(got, "serving model "+e.digest) || !strings.Contains(got, "model dir writable=false") {
			t.Fatalf("log of %s: %v", name, got)
		}
	})

	t.Run("instance replaced", func(t *testing.T) {
		before := e.containers(t, "ep-main")
		r := c.AWS(t, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + writeFile(t, filepath.Join(t.TempDir(), "crash"), []byte("crash")),
			"--content-type", "text/csv", filepath.Join(t.TempDir(), "out")}, "AWS_MAX_ATTEMPTS=1")
		if r.Err == nil || !strings.Contains(r.Stderr, "(ModelError)") {
			t.Fatalf("crash: %v %s", r.Err, r.Stderr)
		}
		e.waitEndpoint(t, "ep-main", func(d map[string]any) bool {
			after := e.containers(t, "ep-main")
			return len(after) == 1 && after[0] != before[0] && d["ProductionVariants"].([]any)[0].(map[string]any)["CurrentInstanceCount"] == 1.0
		})
		out := awsJSON(t, c, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in, "--content-type", "text/csv", filepath.Join(t.TempDir(), "out")})
		if str(out, "InvokedProductionVariant") != "primary" {
			t.Fatalf("after the replacement: %v", out)
		}
	})

	t.Run("hung instance replaced", func(t *testing.T) {
		// The model server stops answering anything, /ping included, but
		// does not exit: the health checks take it out and replace it.
		before := e.containers(t, "ep-main")
		// The instance fetches the model role's credentials from its own
		// URI at the credentials endpoint, revoked with the instance.
		oldCreds := credentialsURL(t, c, strings.TrimSuffix(before[0], ".algo-1"))
		if got := fetchCredentials(t, oldCreds)["RoleArn"]; got != e.role {
			t.Fatalf("the instance's credentials are of %q, want the model's role %s", got, e.role)
		}
		out := filepath.Join(t.TempDir(), "out")
		r := c.AWS(t, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + writeFile(t, filepath.Join(t.TempDir(), "hang"), []byte("hang")),
			"--content-type", "text/csv", out}, "AWS_MAX_ATTEMPTS=1")
		if r.Err != nil {
			t.Fatalf("hang: %v %s", r.Err, r.Stderr)
		}
		e.waitEndpoint(t, "ep-main", func(d map[string]any) bool {
			after := e.containers(t, "ep-main")
			return len(after) == 1 && after[0] != before[0] && d["ProductionVariants"].([]any)[0].(map[string]any)["CurrentInstanceCount"] == 1.0
		})
		got := awsJSON(t, c, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in, "--content-type", "text/csv", out})
		if str(got, "InvokedProductionVariant") != "primary" {
			t.Fatalf("after the replacement: %v", got)
		}
		if !strings.Contains(c.Logs(), "failed 3 health checks in a row") {
			t.Errorf("convoy's log does not say why the instance was replaced")
		}
		revoked(t, oldCreds)
		after := e.containers(t, "ep-main")
		if newCreds := credentialsURL(t, c, strings.TrimSuffix(after[0], ".algo-1")); newCreds == oldCreds {
			t.Error("the replacement instance has its predecessor's credentials URI")
		} else {
			fetchCredentials(t, newCreds)
		}
	})

	t.Run("model port closed to other local processes", func(t *testing.T) {
		// The container serves plain HTTP on 8080; convoy's namespace is
		// this machine's, where any process could dial it. Only sockets
		// with convoy's mark (which needs CAP_NET_ADMIN to set) get in.
		ids := e.containers(t, "ep-main")
		if len(ids) != 1 {
			t.Fatalf("ep-main runs %v", ids)
		}
		addr := net.JoinHostPort(e.containerAddr(t, ids[0]), "8080")
		if conn, err := net.DialTimeout("tcp4", addr, 2*time.Second); err == nil {
			conn.Close()
			t.Fatalf("an unmarked socket connected to the model container's %s", addr)
		}
		d := &net.Dialer{Timeout: 5 * time.Second, Control: executor.DialExposed}
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
		resp, err := client.Get("http://" + addr + "/ping")
		if err != nil {
			t.Fatalf("with convoy's mark, %s: %v", addr, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /ping with convoy's mark: %s", resp.Status)
		}
	})

	t.Run("traffic split", func(t *testing.T) {
		e.waitEndpoint(t, "ep-split", endpointStatus("InService"))
		out := e.python(t, pyRuntime+`
counts = {}
for i in range(int(sys.argv[2])):
    r = rt.invoke_endpoint(EndpointName=sys.argv[1], ContentType="text/csv", Body=b"1\n")
    body = json.loads(r["Body"].read())
    key = r["InvokedProductionVariant"] + "/" + body["tag"]
    counts[key] = counts.get(key, 0) + 1
print(json.dumps(counts))
`, "ep-split", "1000")
		a, b := out["a/a"].(float64), out["b/b"].(float64)
		sigma := math.Sqrt(1000 * 0.8 * 0.2)
		t.Logf("1000 invocations: a %v, b %v (expected 800 ± %.0f at 5 sigma)", a, b, 5*sigma)
		if a+b != 1000 || math.Abs(a-800) > 5*sigma {
			t.Fatalf("split %v, want a 800 ± %.0f of 1000", out, 5*sigma)
		}
	})

	t.Run("update under load", func(t *testing.T) {
		old := e.containers(t, "ep-split")
		if len(old) != 2 {
			t.Fatalf("ep-split runs %v, want 2 containers", old)
		}
		dir := t.TempDir()
		stop, switched := filepath.Join(dir, "stop"), filepath.Join(dir, "switched")
		loop := exec.Command(e.py, "-c", pyRuntime+`
ep, stop, switched = sys.argv[1:4]
ok, failed, before, after = 0, [], {}, {}
while not os.path.exists(stop):
    seen = os.path.exists(switched)
    try:
        r = rt.invoke_endpoint(EndpointName=ep, ContentType="text/csv", Body=b"1\n")
        r["Body"].read()
        d = after if seen else before
        v = r["InvokedProductionVariant"]
        d[v] = d.get(v, 0) + 1
        ok += 1
    except Exception as e:
        failed.append(repr(e)[:300])
print(json.dumps({"ok": ok, "failed": failed, "before": before, "after": after}))
`, "ep-split", stop, switched)
		loop.Env = c.ClientEnv()
		var out, stderr bytes.Buffer
		loop.Stdout, loop.Stderr = &out, &stderr
		if err := loop.Start(); err != nil {
			t.Fatal(err)
		}
		defer loop.Process.Kill()
		time.Sleep(time.Second) // invocations run before the update too
		awsJSON(t, c, cli, []string{"sagemaker", "update-endpoint", "--endpoint-name", "ep-split", "--endpoint-config-name", "cfg-next"})
		d := e.waitEndpoint(t, "ep-split", func(d map[string]any) bool {
			return str(d, "EndpointStatus") == "InService" && str(d, "EndpointConfigName") == "cfg-next"
		})
		if vs := d["ProductionVariants"].([]any); len(vs) != 1 || vs[0].(map[string]any)["VariantName"] != "c" {
			t.Errorf("after the update: %v", d)
		}
		writeFile(t, switched, nil)
		deadline := time.Now().Add(2 * time.Minute)
		for left := e.containers(t, "ep-split"); len(left) != 1; left = e.containers(t, "ep-split") {
			if time.Now().After(deadline) {
				t.Fatalf("old containers still run after the update: %v (were %v)", left, old)
			}
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(time.Second)
		writeFile(t, stop, nil)
		if err := loop.Wait(); err != nil {
			t.Fatalf("invocation loop: %v\n%s", err, stderr.String())
		}
		var res struct {
			OK            int
			Failed        []string
			Before, After map[string]int
		}
		json.Unmarshal(out.Bytes(), &res)
		t.Logf("update under load: %d invocations ok, %d failed; before the switch %v, after %v", res.OK, len(res.Failed), res.Before, res.After)
		if len(res.Failed) > 0 || res.OK == 0 {
			t.Fatalf("invocations failed during the update: %v", res.Failed)
		}
		if len(res.After) != 1 || res.After["c"] == 0 {
			t.Fatalf("after the switch, invocations went to %v, want only c", res.After)
		}
	})

	t.Run("delete", func(t *testing.T) {
		running := e.containers(t, "ep-split")
		if len(running) != 1 {
			t.Fatal("ep-split does not run")
		}
		creds := credentialsURL(t, c, strings.TrimSuffix(running[0], ".algo-1"))
		awsJSON(t, c, cli, []string{"sagemaker", "delete-endpoint", "--endpoint-name", "ep-split"})
		awsJSON(t, c, cli, []string{"sagemaker", "delete-endpoint", "--endpoint-name", "ep-loading"}) // while Creating
		e.waitDeleted(t, "ep-split")
		e.waitDeleted(t, "ep-loading")
		// The CLI's waiter expects DescribeEndpoint's ValidationException
		// for a deleted endpoint, as SageMaker answers.
		if r := c.AWS(t, cli, []string{"sagemaker", "wait", "endpoint-deleted", "--endpoint-name", "ep-split"}); r.Err != nil {
			t.Fatalf("wait endpoint-deleted: %v\n%s", r.Err, r.Stderr)
		}
		if left := append(e.containers(t, "ep-split"), e.containers(t, "ep-loading")...); len(left) > 0 {
			t.Fatalf("containers left after DeleteEndpoint: %v", left)
		}
		revoked(t, creds)
		awsFails(t, c, cli, "ValidationError", []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-split",
			"--body", "fileb://" + in, filepath.Join(t.TempDir(), "out")})
		list := awsJSON(t, c, cli, []string{"sagemaker", "list-endpoints"})
		if n := len(list["Endpoints"].([]any)); n != 3 { // ep-main, ep-exit, ep-denied
			t.Errorf("list-endpoints: %v", list)
		}
	})
	t.Logf("endpoint tests ran in %s", time.Since(started).Round(time.Millisecond))

	// Containers do not survive convoy; a restarted convoy starts the
	// endpoint again.
	if err := c.Stop(); err != nil {
		t.Fatalf("stop convoy: %v", err)
	}
	if out, _ := exec.Command("runc", "--root", filepath.Join(c.DataDir, "executor", "runc"), "list", "-q").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("containers left after shutdown: %s", out)
	}
	e.c = harness.Start(t, harness.Options{DataDir: c.DataDir})
	c = e.c
	e.waitEndpoint(t, "ep-main", endpointStatus("InService"))
	out := awsJSON(t, c, cli, []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "ep-main", "--body", "fileb://" + in, "--content-type", "text/csv", filepath.Join(t.TempDir(), "out")})
	if str(out, "InvokedProductionVariant") != "primary" {
		t.Fatalf("after restart: %v", out)
	}
	if d := e.describe(t, "ep-exit"); str(d, "EndpointStatus") != "Failed" {
		t.Errorf("ep-exit after restart: %v", d)
	}
	awsJSON(t, c, cli, []string{"sagemaker", "delete-endpoint", "--endpoint-name", "ep-main"})
	e.waitDeleted(t, "ep-main")
	if out, _ := exec.Command("runc", "--root", filepath.Join(c.DataDir, "executor", "runc"), "list", "-q").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("containers left after deleting every endpoint: %s", out)
	}
}
