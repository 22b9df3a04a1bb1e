package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// processingJob is a CreateProcessingJob request for the trainer image run
// as a processing container.
func processingJob(name, role, key string, args ...string) map[string]any {
	return map[string]any{
		"ProcessingJobName": name,
		"RoleArn":           role,
		"AppSpecification": map[string]any{
			"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1", "ContainerArguments": append([]string{"process"}, args...)},
		"ProcessingInputs": []any{map[string]any{"InputName": "data", "S3Input": map[string]any{
			"S3Uri": "s3://input/raw/", "LocalPath": "/opt/ml/processing/input/data", "S3DataType": "S3Prefix", "S3InputMode": "File"}}},
		"ProcessingOutputConfig": map[string]any{"KmsKeyId": key, "Outputs": []any{map[string]any{"OutputName": "result", "S3Output": map[string]any{
			"S3Uri": "s3://output/processed", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}}},
		"ProcessingResources": map[string]any{"ClusterConfig": map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}},
		"StoppingCondition":   map[string]any{"MaxRuntimeInSeconds": 300},
		"Environment":         map[string]string{"JOB_ENV": "yes", "PROBE": "s3://input/raw/a.csv"},
	}
}

// Processing jobs run for real, as training jobs do: inputs staged from S3
// with the role's credentials, the trainer image in "process" mode, the
// output directory uploaded file by file under the job's KMS key.
func TestProcessingJob(t *testing.T) {
	cli := harness.Tool(t, "aws")
	c := harness.Start(t, harness.Options{Args: []string{"--training-stop-grace", "5s"}})
	ctx := harness.Context(t)

	jobsReady(t, c, cli, "input", "output")
	admin := c.S3(t)
	data := map[string]string{"raw/a.csv": "1,2,3\n", "raw/sub/b.csv": "4,5,6\n", "other/c.csv": "not staged\n"}
	for k, v := range data {
		if _, err := admin.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String(k), Body: strings.NewReader(v)}); err != nil {
			t.Fatal(err)
		}
	}
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "processed"}), "KeyMetadata", "Arn")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "processor", "--assume-role-policy-document", trust}), "Role", "Arn")
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "processor", "--policy-name", "data", "--policy-document", policy})

	create := func(job map[string]any) {
		t.Helper()
		file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
		out := awsJSON(t, c, cli, []string{"sagemaker", "create-processing-job", "--cli-input-json", "file://" + file})
		if !strings.HasSuffix(str(out, "ProcessingJobArn"), ":processing-job/"+strings.ToLower(job["ProcessingJobName"].(string))) {
			t.Fatalf("create-processing-job: %v", out)
		}
	}
	wait := func(name string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(2 * time.Minute)
		for {
			d := awsJSON(t, c, cli, []string{"sagemaker", "describe-processing-job", "--processing-job-name", name})
			if s := str(d, "ProcessingJobStatus"); s != "InProgress" && s != "Stopping" {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s did not end within 2 minutes: %v", name, d)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	create(processingJob("process-ok", role, key))
	create(processingJob("process-fail", role, key, "fail"))

	t.Run("completed", func(t *testing.T) {
		d := wait("process-ok")
		if str(d, "ProcessingJobStatus") != "Completed" || str(d, "ExitMessage") != "processed" {
			t.Fatalf("process-ok: %v", d)
		}
		local := filepath.Join(t.TempDir(), "result.txt")
		if r := c.AWS(t, cli, []string{"s3", "cp", "s3://output/processed/result.txt", local}); r.Err != nil {
			t.Fatalf("s3 cp: %v\n%s", r.Err, r.Stderr)
		}
		got, _ := os.ReadFile(local)
		h := sha256.New()
		for _, f := range []string{"a.csv", "sub/b.csv"} {
			fmt.Fprintf(h, "%s\n%d\n%s", f, len(data["raw/"+f]), data["raw/"+f])
		}
		want := "job=process-ok host=algo-1 hosts=algo-1\ndigest=2 files " + hex.EncodeToString(h.Sum(nil)) + "\ninput-writable=false\nenv=yes\n" +
			// Through the SDK's default chain and the credentials endpoint.
			"probe=ok 1,2,3\ncredential variables: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI\n"
		if string(got) != want {
			t.Fatalf("result.txt:\n%s\nwant:\n%s", got, want)
		}
		for _, k := range []string{"processed/result.txt", "processed/sub/n.txt"} {
			head := awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", "output", "--key", k})
			if str(head, "ServerSideEncryption") != "aws:kms" || str(head, "SSEKMSKeyId") != key {
				t.Fatalf("%s encryption: %v", k, head)
			}
		}
		l := awsJSON(t, c, cli, []string{"sagemaker", "list-processing-jobs", "--status-equals", "Completed"})
		if s := l["ProcessingJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["ProcessingJobName"] != "process-ok" {
			t.Fatalf("list-processing-jobs: %v", l)
		}
	})

	t.Run("failed", func(t *testing.T) {
		d := wait("process-fail")
		if str(d, "ProcessingJobStatus") != "Failed" || !strings.HasPrefix(str(d, "FailureReason"), "AlgorithmError: algo-1 exited with exit code 1") ||
			!strings.Contains(str(d, "FailureReason"), "bad input") || str(d, "ExitMessage") != "bad input" {
			t.Fatalf("process-fail: %v", d)
		}
		awsFails(t, c, cli, "ValidationException", []string{"sagemaker", "stop-processing-job", "--processing-job-name", "process-fail"})
	})
}
