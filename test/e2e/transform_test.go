package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// transformJob is a CreateTransformJob request over s3://input/<prefix>/,
// written under s3://output/<name>.
func transformJob(name, model, prefix string, extra map[string]any) map[string]any {
	j := map[string]any{
		"TransformJobName": name,
		"ModelName":        model,
		"TransformInput": map[string]any{
			"DataSource":  map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://input/" + prefix + "/"}},
			"ContentType": "text/csv", "SplitType": "Line"},
		"TransformOutput":    map[string]any{"S3OutputPath": "s3://output/" + name, "Accept": "text/csv", "AssembleWith": "Line"},
		"TransformResources": map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1},
	}
	for k, v := range extra {
		j[k] = v
	}
	return j
}

// Batch transform runs for real: the trainer image serves in echo mode in
// runc containers, convoy sends it every line of the input objects and
// writes the answers back to S3, driven by the aws CLI and boto3.
func TestTransformJobs(t *testing.T) {
	e := setupEndpoints(t)
	c, cli := e.c, e.cli
	ctx := harness.Context(t)

	// The models' role reads the model, the input and writes the output.
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "batch", "--assume-role-policy-document", trust}), "Role", "Arn")
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "batch", "--policy-name", "batch", "--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*","arn:aws:s3:::output/models/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":%q}]}`, e.key)})
	e.createModelAs(t, "m-echo", role, map[string]string{"SERVE_MODE": "echo"})
	e.createModelAs(t, "m-poison", role, map[string]string{"SERVE_MODE": "echo", "SERVE_FAIL_ON": "poison"})
	e.createModelAs(t, "m-slow", role, map[string]string{"SERVE_MODE": "echo", "SERVE_DELAY": "1s"})

	admin := c.S3(t)
	put := func(key, body string) {
		t.Helper()
		if _, err := admin.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String(key), Body: strings.NewReader(body)}); err != nil {
			t.Fatal(err)
		}
	}
	inputs := map[string]string{}
	for i, name := range []string{"a.csv", "b.csv", "sub/c.csv"} {
		var b strings.Builder
		for row := range 50 * (i + 1) {
			fmt.Fprintf(&b, "%s,%d,%d\n", name, row, row*row)
		}
		inputs[name] = b.String()
		put("batch/"+name, b.String())
	}
	put("poison/ok.csv", "1,2\n3,4\n")
	put("poison/bad.csv", "5,6\npoison,7\n8,9\n")
	var slow strings.Builder
	for row := range 60 {
		fmt.Fprintf(&slow, "%d\n", row)
	}
	put("slow/rows.csv", slow.String())

	create := func(job map[string]any) {
		t.Helper()
		file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
		out := awsJSON(t, c, cli, []string{"sagemaker", "create-transform-job", "--cli-input-json", "file://" + file})
		if !strings.HasSuffix(str(out, "TransformJobArn"), ":transform-job/"+job["TransformJobName"].(string)) {
			t.Fatalf("create-transform-job: %v", out)
		}
	}
	describe := func(name string) map[string]any {
		return awsJSON(t, c, cli, []string{"sagemaker", "describe-transform-job", "--transform-job-name", name})
	}
	// wait polls (the CLI's waiter polls once a minute) until the job
	// ends, then has the waiter agree when it should succeed.
	wait := func(name string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			d := describe(name)
			switch s := str(d, "TransformJobStatus"); s {
			case "Completed", "Stopped":
				awsJSON(t, c, cli, []string{"sagemaker", "wait", "transform-job-completed-or-stopped", "--transform-job-name", name})
				return d
			case "Failed":
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("transform job %s did not end within 3 minutes: %v", name, d)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	output := func(key string) string {
		t.Helper()
		local := filepath.Join(t.TempDir(), "out")
		if r := c.AWS(t, cli, []string{"s3", "cp", "s3://output/" + key, local}); r.Err != nil {
			t.Fatalf("s3 cp %s: %v\n%s", key, r.Err, r.Stderr)
		}
		b, _ := os.ReadFile(local)
		return string(b)
	}

	create(transformJob("tj-multi", "m-echo", "batch", map[string]any{"BatchStrategy": "MultiRecord", "MaxPayloadInMB": 1,
		"TransformOutput": map[string]any{"S3OutputPath": "s3://output/tj-multi", "AssembleWith": "Line", "KmsKeyId": e.key}}))
	create(transformJob("tj-single", "m-echo", "batch", map[string]any{"BatchStrategy": "SingleRecord", "MaxConcurrentTransforms": 4,
		"TransformResources": map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 2}}))
	create(transformJob("tj-poison", "m-poison", "poison", map[string]any{"BatchStrategy": "SingleRecord",
		"ModelClientConfig": map[string]any{"InvocationsMaxRetries": 0}}))

	t.Run("multi record", func(t *testing.T) {
		d := wait("tj-multi")
		if str(d, "TransformJobStatus") != "Completed" {
			t.Fatalf("tj-multi: %v", d)
		}
		for name, want := range inputs {
			if got := output("tj-multi/" + name + ".out"); got != want {
				t.Errorf("%s.out:\n%.200s\nwant the input:\n%.200s", name, got, want)
			}
			head := awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", "output", "--key", "tj-multi/" + name + ".out"})
			if str(head, "ServerSideEncryption") != "aws:kms" || str(head, "SSEKMSKeyId") != e.key {
				t.Errorf("%s.out encryption: %v", name, head)
			}
		}
		streams := awsJSON(t, c, cli, []string{"logs", "describe-log-streams", "--log-group-name", "/aws/sagemaker/TransformJobs", "--log-stream-name-prefix", "tj-multi/"})
		if s := streams["logStreams"].([]any); len(s) != 1 {
			t.Errorf("log streams of tj-multi: %v", streams)
		}
	})

	t.Run("single record boto3", func(t *testing.T) {
		wait("tj-single")
		out := e.python(t, `
import os, json, boto3
sm = boto3.client("sagemaker", endpoint_url=os.environ["CONVOY_ENDPOINT"])
d = sm.describe_transform_job(TransformJobName="tj-single")
l = sm.list_transform_jobs(NameContains="TJ-S", StatusEquals="Completed")
print(json.dumps({"status": d["TransformJobStatus"], "start": d["TransformStartTime"].timestamp(),
	"end": d["TransformEndTime"].timestamp(), "created": d["CreationTime"].timestamp(),
	"strategy": d["BatchStrategy"], "listed": [s["TransformJobName"] for s in l["TransformJobSummaries"]]}))
`)
		if out["status"] != "Completed" || out["strategy"] != "SingleRecord" || fmt.Sprint(out["listed"]) != "[tj-single]" {
			t.Fatalf("boto3: %v", out)
		}
		if s, e, cr := out["start"].(float64), out["end"].(float64), out["created"].(float64); !(cr <= s && s <= e) {
			t.Fatalf("times: %v", out)
		}
		for name, want := range inputs {
			if got := output("tj-single/" + name + ".out"); got != want {
				t.Errorf("%s.out:\n%.200s\nwant the input:\n%.200s", name, got, want)
			}
		}
	})

	t.Run("model error", func(t *testing.T) {
		d := wait("tj-poison")
		reason := str(d, "FailureReason")
		if str(d, "TransformJobStatus") != "Failed" || !strings.Contains(reason, "(500)") || !strings.Contains(reason, "poisoned record") ||
			!strings.Contains(reason, "s3://input/poison/bad.csv") || d["TransformEndTime"] == nil {
			t.Fatalf("tj-poison: %v", d)
		}
		awsFails(t, c, cli, "ValidationException", []string{"sagemaker", "stop-transform-job", "--transform-job-name", "tj-poison"})
	})

	t.Run("stop", func(t *testing.T) {
		create(transformJob("tj-slow", "m-slow", "slow", map[string]any{"BatchStrategy": "SingleRecord"}))
		deadline := time.Now().Add(2 * time.Minute)
		for d := describe("tj-slow"); d["TransformStartTime"] == nil; d = describe("tj-slow") {
			if str(d, "TransformJobStatus") != "InProgress" || time.Now().After(deadline) {
				t.Fatalf("tj-slow did not start: %v", d)
			}
			time.Sleep(300 * time.Millisecond)
		}
		if running := runcList(t, c.DataDir); len(running) != 1 {
			t.Fatalf("tj-slow runs %v, want one container", running)
		}
		awsJSON(t, c, cli, []string{"sagemaker", "stop-transform-job", "--transform-job-name", "tj-slow"})
		d := wait("tj-slow")
		if str(d, "TransformJobStatus") != "Stopped" || d["TransformEndTime"] == nil {
			t.Fatalf("tj-slow: %v", d)
		}
		if running := runcList(t, c.DataDir); len(running) != 0 {
			t.Fatalf("containers left after the job stopped: %v", running)
		}
		if r := c.AWS(t, cli, []string{"s3api", "head-object", "--bucket", "output", "--key", "tj-slow/rows.csv.out"}, "AWS_MAX_ATTEMPTS=1"); r.Err == nil {
			t.Fatalf("a stopped job's unfinished output was written")
		}
		deploys, _ := filepath.Glob(filepath.Join(c.DataDir, "transforms", "*", "deploy-*"))
		if len(deploys) != 0 {
			t.Fatalf("deployment files left: %v", deploys)
		}
	})
}

// runcList lists the containers that run under convoy's executor.
func runcList(t *testing.T, dataDir string) []string {
	t.Helper()
	out, err := exec.Command("runc", "--root", filepath.Join(dataDir, "executor", "runc"), "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	return strings.Fields(string(bytes.TrimSpace(out)))
}
