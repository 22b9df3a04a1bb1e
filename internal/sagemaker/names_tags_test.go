package sagemaker

import (
	"context"
	"testing"

	"convoy/internal/iam"
)

// Training job names are unique regardless of case on SageMaker, and
// convoy's ARN and its runner's job directory (runner.go: id =
// strings.ToLower(job.Name), dir = Dir/<id>, executor JobSpec.ID = id) are
// lower-cased. A second job "PROBE-JOB" next to a running "probe-job" is
// refused as ResourceInUse; otherwise both would share the same ARN, the
// same tags and the same job directory, volume and container IDs.
func TestJobNamesUniqueRegardlessOfCase(t *testing.T) {
	e := newEnv(t)
	defer close(e.runner.hold)
	if code, out := e.call("CreateTrainingJob", e.job("probe-job", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "owner", "Value": "alice"}}
	}), e.admin); code != 200 {
		t.Fatalf("first job: %d %v", code, out)
	}
	code, out := e.call("CreateTrainingJob", e.job("PROBE-JOB", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "owner", "Value": "mallory"}}
	}), e.admin)
	if code == 200 {
		_, tags := e.call("ListTags", map[string]any{"ResourceArn": e.svc.jobARN("probe-job")}, e.admin)
		t.Fatalf("a second training job PROBE-JOB was created beside running probe-job (same ARN %v, same runner dir %q); "+
			"the first job's tags are now %v", out["TrainingJobArn"], "Dir/probe-job", tags["Tags"])
	}
	if out["__type"] != "ResourceInUse" {
		t.Fatalf("second job: %d %v, want ResourceInUse", code, out)
	}
}

// The same for processing jobs (processing_runner.go: id "pj-"+lower(name)).
func TestProcessingJobNamesUniqueRegardlessOfCase(t *testing.T) {
	e := newEnv(t)
	defer close(e.runner.hold)
	if code, out := e.call("CreateProcessingJob", e.processingJob("probe-pj", nil), e.admin); code != 200 {
		t.Fatalf("first job: %d %v", code, out)
	}
	code, out := e.call("CreateProcessingJob", e.processingJob("Probe-PJ", nil), e.admin)
	if code == 200 {
		t.Fatalf("processing job Probe-PJ created beside probe-pj with the same ARN %v and runner id pj-probe-pj", out["ProcessingJobArn"])
	}
	if out["__type"] != "ResourceInUse" {
		t.Fatalf("second job: %d %v, want ResourceInUse", code, out)
	}
}

// Tags given at creation need sagemaker:AddTags too, as on AWS, with the
// request's tags as aws:RequestTag/… and aws:TagKeys: a principal denied
// AddTags cannot tag through Create*, and one whose AddTags is limited to
// some tag keys can set only those.
func TestCreateWithTagsNeedsAddTags(t *testing.T) {
	e := newEnv(t)
	defer close(e.runner.hold)
	ctx := context.Background()
	e.ids.CreateUser(ctx, "dev", "")
	k, _, _ := e.ids.CreateAccessKey(ctx, "dev")
	dev, _ := e.ids.UserPrincipal(ctx, "dev", k.ID)
	e.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "sm", `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["sagemaker:*","iam:PassRole"],"Resource":"*"},
		{"Effect":"Deny","Action":"sagemaker:AddTags","Resource":"*"}]}`)
	code, out := e.call("CreateTrainingJob", e.job("tagged", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "cost-center", "Value": "someone-else"}}
	}), dev)
	if code == 200 {
		_, tags := e.call("ListTags", map[string]any{"ResourceArn": out["TrainingJobArn"]}, e.admin)
		t.Fatalf("a principal denied sagemaker:AddTags tagged a job at creation: %v", tags["Tags"])
	}
	if out["__type"] != "AccessDeniedException" && out["__type"] != "AccessDenied" {
		t.Errorf("tagged create by a principal denied AddTags: %d %v, want AccessDenied", code, out)
	}

	e.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "sm", `{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["sagemaker:*","iam:PassRole"],"Resource":"*"},
		{"Effect":"Deny","Action":"sagemaker:AddTags","Resource":"*","Condition":{"ForAnyValue:StringNotEquals":{"aws:TagKeys":["team"]}}}]}`)
	if code, out := e.call("CreateTrainingJob", e.job("team-only", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "team", "Value": "ml"}}
	}), dev); code != 200 {
		t.Errorf("a tag key the policy allows: %d %v", code, out)
	}
	if code, _ := e.call("CreateTrainingJob", e.job("other-key", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "cost-center", "Value": "x"}}
	}), dev); code == 200 {
		t.Errorf("a tag key the policy denies was set at creation")
	}
}
