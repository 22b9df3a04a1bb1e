package sagemaker

import (
	"context"
	"strings"
	"testing"
	"time"

	"convoy/internal/images"
)

// RunProcessing makes the fake runner a ProcessingRunner too: it starts,
// then ends the way the test says, or when stopped.
func (f *fakeRunner) RunProcessing(ctx context.Context, job *ProcessingJob, started func()) ProcessingOutcome {
	started()
	select {
	case <-ctx.Done():
		return ProcessingOutcome{Status: Stopped}
	case <-f.hold:
	}
	o := f.outcome
	return ProcessingOutcome{Status: o.Status, FailureReason: o.FailureReason, ExitMessage: "done"}
}

func (e *env) processingJob(name string, mod func(map[string]any)) map[string]any {
	j := map[string]any{
		"ProcessingJobName": name,
		"RoleArn":           e.role,
		"AppSpecification":  map[string]any{"ImageUri": "trainer:1", "ContainerArguments": []string{"process"}},
		"ProcessingInputs": []any{map[string]any{"InputName": "data", "S3Input": map[string]any{
			"S3Uri": "s3://data/in/", "LocalPath": "/opt/ml/processing/input/data", "S3DataType": "S3Prefix", "S3InputMode": "File"}}},
		"ProcessingOutputConfig": map[string]any{"Outputs": []any{map[string]any{"OutputName": "out", "S3Output": map[string]any{
			"S3Uri": "s3://out/processed", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}}},
		"ProcessingResources": map[string]any{"ClusterConfig": map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}},
		"StoppingCondition":   map[string]any{"MaxRuntimeInSeconds": 600},
	}
	if mod != nil {
		mod(j)
	}
	return j
}

func waitProcessing(t *testing.T, e *env, name, status string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, d := e.call("DescribeProcessingJob", map[string]string{"ProcessingJobName": name}, e.admin)
		if d["ProcessingJobStatus"] == status {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("processing job %s is %v, want %s", name, d["ProcessingJobStatus"], status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProcessingValidation(t *testing.T) {
	e := newEnv(t)
	input := func(j map[string]any) map[string]any {
		return j["ProcessingInputs"].([]any)[0].(map[string]any)["S3Input"].(map[string]any)
	}
	output := func(j map[string]any) map[string]any {
		return j["ProcessingOutputConfig"].(map[string]any)["Outputs"].([]any)[0].(map[string]any)["S3Output"].(map[string]any)
	}
	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		msg  string
	}{
		{"bad name", func(j map[string]any) { j["ProcessingJobName"] = "bad_name" }, "processingJobName"},
		{"bad role", func(j map[string]any) { j["RoleArn"] = "role" }, "roleArn"},
		{"missing role", func(j map[string]any) { j["RoleArn"] = "arn:aws:iam::" + e.ids.AccountID() + ":role/none" }, "Could not assume role"},
		{"no image", func(j map[string]any) { j["AppSpecification"] = map[string]any{} }, "ImageUri"},
		{"no cluster", func(j map[string]any) { j["ProcessingResources"] = map[string]any{} }, "ClusterConfig"},
		{"zero hosts", func(j map[string]any) {
			j["ProcessingResources"].(map[string]any)["ClusterConfig"].(map[string]any)["InstanceCount"] = 0
		}, "InstanceCount"},
		{"runtime", func(j map[string]any) { j["StoppingCondition"] = map[string]any{"MaxRuntimeInSeconds": 777601} }, "MaxRuntimeInSeconds"},
		{"input outside", func(j map[string]any) { input(j)["LocalPath"] = "/opt/ml/input/data" }, "LocalPath"},
		{"input dotdot", func(j map[string]any) { input(j)["LocalPath"] = "/opt/ml/processing/../x" }, "LocalPath"},
		{"input pipe", func(j map[string]any) { input(j)["S3InputMode"] = "Pipe" }, "Pipe"},
		{"manifest", func(j map[string]any) { input(j)["S3DataType"] = "ManifestFile" }, "S3DataType"},
		{"bad input uri", func(j map[string]any) { input(j)["S3Uri"] = "s3:/x" }, "S3Uri"},
		{"output outside", func(j map[string]any) { output(j)["LocalPath"] = "/tmp/out" }, "LocalPath"},
		{"continuous", func(j map[string]any) { output(j)["S3UploadMode"] = "Continuous" }, "S3UploadMode"},
		{"overlap", func(j map[string]any) { output(j)["LocalPath"] = "/opt/ml/processing/input/data/out" }, "overlap"},
	} {
		status, out := e.call("CreateProcessingJob", e.processingJob("p1", tc.mod), e.admin)
		if status != 400 || out["__type"] != "ValidationException" || !strings.Contains(out["message"].(string), tc.msg) {
			t.Errorf("%s: %d %v", tc.name, status, out)
		}
	}
	var n int
	e.db.QueryRow(`SELECT COUNT(*) FROM sm_processing_jobs`).Scan(&n)
	if n != 0 {
		t.Fatalf("invalid requests created %d jobs", n)
	}
}

func TestProcessingLifecycle(t *testing.T) {
	e := newEnv(t)
	status, out := e.call("CreateProcessingJob", e.processingJob("Proc", nil), e.admin)
	if status != 200 || !strings.HasSuffix(out["ProcessingJobArn"].(string), ":processing-job/proc") {
		t.Fatalf("create: %d %v", status, out)
	}
	if status, out := e.call("CreateProcessingJob", e.processingJob("Proc", nil), e.admin); status != 400 || out["__type"] != "ResourceInUse" {
		t.Fatalf("duplicate: %d %v", status, out)
	}
	// A training job of the same name is another resource.
	if status, out := e.call("CreateTrainingJob", e.job("Proc", nil), e.admin); status != 200 {
		t.Fatalf("training job with a processing job's name: %d %v", status, out)
	}
	e.runner.outcome = Outcome{Status: Completed}
	close(e.runner.hold)
	d := waitProcessing(t, e, "Proc", Completed)
	if d["ProcessingStartTime"] == nil || d["ProcessingEndTime"] == nil || d["RoleArn"] != e.role || d["ExitMessage"] != "done" ||
		d["ProcessingJobArn"] != out["ProcessingJobArn"] || d["SecondaryStatus"] != nil {
		t.Fatalf("describe: %v", d)
	}
	if status, _ := e.call("AddTags", map[string]any{"ResourceArn": d["ProcessingJobArn"], "Tags": []Tag{{"k", "v"}}}, e.admin); status != 200 {
		t.Fatalf("AddTags on a processing job: %d", status)
	}

	// StopProcessingJob on a running job.
	e.runner.hold = make(chan struct{})
	e.call("CreateProcessingJob", e.processingJob("tostop", nil), e.admin)
	if status, out := e.call("StopProcessingJob", map[string]string{"ProcessingJobName": "tostop"}, e.admin); status != 200 {
		t.Fatalf("stop: %d %v", status, out)
	}
	waitProcessing(t, e, "tostop", Stopped)
	if status, out := e.call("StopProcessingJob", map[string]string{"ProcessingJobName": "tostop"}, e.admin); status != 400 || out["__type"] != "ValidationException" {
		t.Fatalf("stop a stopped job: %d %v", status, out)
	}
	if status, out := e.call("DescribeProcessingJob", map[string]string{"ProcessingJobName": "none"}, e.admin); status != 400 || out["__type"] != "ResourceNotFound" {
		t.Fatalf("describe missing: %d %v", status, out)
	}

	// List, filtered and paged.
	_, l := e.call("ListProcessingJobs", map[string]any{"StatusEquals": "Stopped"}, e.admin)
	if s := l["ProcessingJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["ProcessingJobName"] != "tostop" {
		t.Fatalf("list stopped: %v", l)
	}
	_, l = e.call("ListProcessingJobs", map[string]any{"MaxResults": 1, "SortBy": "Name", "SortOrder": "Ascending"}, e.admin)
	if s := l["ProcessingJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["ProcessingJobName"] != "Proc" || l["NextToken"] == nil {
		t.Fatalf("list page 1: %v", l)
	}
	_, l = e.call("ListProcessingJobs", map[string]any{"MaxResults": 1, "SortBy": "Name", "SortOrder": "Ascending", "NextToken": l["NextToken"]}, e.admin)
	if s := l["ProcessingJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["ProcessingJobName"] != "tostop" || l["NextToken"] != nil {
		t.Fatalf("list page 2: %v", l)
	}

	// A job running when convoy stops is Failed after a restart.
	e.runner.hold = make(chan struct{})
	e.call("CreateProcessingJob", e.processingJob("orphan", nil), e.admin)
	e.open()
	d = waitProcessing(t, e, "orphan", Failed)
	if !strings.Contains(d["FailureReason"].(string), "convoy stopped") {
		t.Fatalf("orphan: %v", d)
	}
}

func TestProcessingArgs(t *testing.T) {
	for _, tc := range []struct {
		a    AppSpecification
		want string
	}{
		{AppSpecification{}, "/bin/e serve"},
		{AppSpecification{ContainerArguments: []string{"process"}}, "/bin/e process"},
		{AppSpecification{ContainerEntrypoint: []string{"python3", "x.py"}}, "python3 x.py"},
		{AppSpecification{ContainerEntrypoint: []string{"sh"}, ContainerArguments: []string{"-c", "true"}}, "sh -c true"},
	} {
		cfg := images.ImageConfig{Entrypoint: []string{"/bin/e"}, Cmd: []string{"serve"}}
		if got := strings.Join(processingArgs(&tc.a, cfg), " "); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.a, got, tc.want)
		}
	}
	if processingID("Job") != "pj-job" || len(processingID(strings.Repeat("a", 63))) != 63 {
		t.Fatalf("processingID: %s", processingID(strings.Repeat("a", 63)))
	}
}
