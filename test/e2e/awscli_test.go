package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"convoy/test/e2e/harness"
)

// The aws CLI (v1 and v2) reaches convoy over TLS with the CA bundle from
// convoy.env and gets an answer in the AWS shape it parses; without the
// bundle it refuses convoy's certificate.
func TestAWSCLIReachesConvoyOverTLS(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	for name, cli := range harness.AWSCLIs(t) {
		t.Run(name, func(t *testing.T) {
			for _, tc := range []struct {
				args []string
				code string
			}{
				{[]string{"sagemaker", "list-notebook-instances"}, "(UnknownOperationException)"},
				{[]string{"iam", "list-groups"}, "(InvalidAction)"},
				{[]string{"s3api", "get-bucket-acl", "--bucket", "nothing"}, "(NotImplemented)"},
			} {
				r := c.AWS(t, cli, tc.args)
				if !strings.Contains(r.Stderr, tc.code) {
					t.Errorf("aws %v: want an AWS error %s, got err %v\nstdout %s\nstderr %s", tc.args, tc.code, r.Err, r.Stdout, r.Stderr)
				}
			}
			r := c.AWS(t, cli, []string{"sagemaker", "list-training-jobs"}, "!AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS=1")
			if r.Err == nil || !strings.Contains(strings.ToLower(r.Stderr), "certificate verify failed") {
				t.Errorf("without the CA bundle: err %v, stderr %s", r.Err, r.Stderr)
			}
		})
	}

	t.Run("boto3", func(t *testing.T) {
		py := harness.Tool(t, "python3")
		script := `
import os, boto3, botocore.exceptions as e
s = boto3.client("sagemaker", endpoint_url=os.environ["CONVOY_ENDPOINT"])
try:
    s.list_notebook_instances()
    print("RESULT")
except e.ClientError as err:
    print("CODE", err.response["Error"]["Code"], err.response["ResponseMetadata"]["RequestId"])
`
		cmd := exec.Command(py, "-c", script)
		cmd.Env = c.ClientEnv()
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "CODE UnknownOperationException ") || len(strings.Fields(string(out))) != 3 {
			t.Fatalf("boto3: %v\n%s", err, out)
		}
	})

	// Nothing secret reaches the log.
	logs := c.Logs()
	for _, secret := range []string{c.Env["AWS_SECRET_ACCESS_KEY"], "Signature=", "Credential="} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
	if !strings.Contains(logs, "request_id=") {
		t.Error("no access log lines")
	}
}
