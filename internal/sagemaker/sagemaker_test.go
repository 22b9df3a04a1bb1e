package sagemaker

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/awsproto"
	"convoy/internal/iam"
	"convoy/internal/iam/iamtest"
	"convoy/internal/state"
)

// fakeRunner stands in for the executor in these unit tests: it reports a
// few statuses and ends the way the test says, or when stopped.
type fakeRunner struct {
	outcome Outcome
	hold    chan struct{}
}

func (f *fakeRunner) Run(ctx context.Context, job *Job, report Reporter) Outcome {
	report("Downloading", "Downloading input data")
	report("Training", "Training image download completed. Training in progress.")
	select {
	case <-ctx.Done():
		return Outcome{Status: Stopped, Secondary: "Stopped"}
	case <-f.hold:
	}
	report("Uploading", "Uploading generated training model")
	return f.outcome
}

type env struct {
	t      *testing.T
	db     *state.DB
	ids    *iam.Store
	svc    *Service
	admin  *iam.Principal
	role   string
	runner *fakeRunner
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	db, _, ids := iamtest.Open(t)
	admin := iamtest.Admin(t, ids)
	role, err := ids.CreateRole(ctx, iam.Role{Name: "exec", Trust: `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, db: db, ids: ids, admin: admin, role: role.ARN, runner: &fakeRunner{hold: make(chan struct{})}}
	e.open()
	return e
}

func (e *env) open() {
	svc, err := Open(context.Background(), e.db, e.ids, "us-east-1", e.runner, slog.New(slog.DiscardHandler))
	if err != nil {
		e.t.Fatal(err)
	}
	e.svc = svc
}

func (e *env) call(op string, body any, p *iam.Principal) (int, map[string]any) {
	e.t.Helper()
	raw, _ := json.Marshal(body)
	r := httptest.NewRequest("POST", "/", bytes.NewReader(raw))
	r.Header.Set("X-Amz-Target", "SageMaker."+op)
	ctx, _ := awsproto.WithRequestID(r.Context())
	r = r.WithContext(iam.WithPrincipal(ctx, p))
	w := httptest.NewRecorder()
	e.svc.ServeHTTP(w, r)
	out := map[string]any{}
	b, _ := io.ReadAll(w.Body)
	json.Unmarshal(b, &out)
	return w.Code, out
}

func (e *env) job(name string, mod func(map[string]any)) map[string]any {
	j := map[string]any{
		"TrainingJobName":        name,
		"RoleArn":                e.role,
		"AlgorithmSpecification": map[string]any{"TrainingImage": "trainer:1", "TrainingInputMode": "File"},
		"InputDataConfig": []any{map[string]any{"ChannelName": "train", "DataSource": map[string]any{
			"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://data/train/"}}}},
		"OutputDataConfig":  map[string]any{"S3OutputPath": "s3://models/out"},
		"ResourceConfig":    map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
		"StoppingCondition": map[string]any{"MaxRuntimeInSeconds": 600},
	}
	if mod != nil {
		mod(j)
	}
	return j
}

func waitStatus(t *testing.T, e *env, name, status string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, d := e.call("DescribeTrainingJob", map[string]string{"TrainingJobName": name}, e.admin)
		if d["TrainingJobStatus"] == status {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s is %v, want %s", name, d["TrainingJobStatus"], status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		mod  func(map[string]any)
		code string
		msg  string
	}{
		{"bad name", func(j map[string]any) { j["TrainingJobName"] = "bad_name" }, "ValidationException", "trainingJobName"},
		{"bad role", func(j map[string]any) { j["RoleArn"] = "role" }, "ValidationException", "roleArn"},
		{"missing role", func(j map[string]any) { j["RoleArn"] = "arn:aws:iam::" + e.ids.AccountID() + ":role/none" }, "ValidationException", "Could not assume role"},
		{"no image", func(j map[string]any) { j["AlgorithmSpecification"] = map[string]any{"TrainingInputMode": "File"} }, "ValidationException", "TrainingImage"},
		{"unknown mode", func(j map[string]any) {
			j["AlgorithmSpecification"] = map[string]any{"TrainingImage": "x", "TrainingInputMode": "Stream"}
		}, "ValidationException", "Value 'Stream' at 'algorithmSpecification.trainingInputMode' failed to satisfy constraint: Member must satisfy enum value set: [Pipe, File, FastFile]"},
		{"unknown channel mode", func(j map[string]any) { channel(j)["InputMode"] = "pipe" }, "ValidationException", "inputDataConfig.1.member.inputMode"},
		{"gzip in file mode", func(j map[string]any) { channel(j)["CompressionType"] = "Gzip" }, "ValidationException",
			"Invalid compression type for channel train: File mode only supports NONE, got Gzip instead"},
		{"gzip in fastfile mode", func(j map[string]any) { channel(j)["CompressionType"] = "Gzip"; channel(j)["InputMode"] = "FastFile" }, "ValidationException",
			"FastFile mode only supports NONE"},
		{"gzip in a file channel of a pipe job", func(j map[string]any) {
			j["AlgorithmSpecification"].(map[string]any)["TrainingInputMode"] = "Pipe"
			channel(j)["InputMode"] = "File"
			channel(j)["CompressionType"] = "Gzip"
		}, "ValidationException", "File mode only supports NONE"},
		{"recordio in file mode", func(j map[string]any) { channel(j)["RecordWrapperType"] = "RecordIO" }, "ValidationException",
			"Invalid record wrapper type for channel train: File mode only supports NONE, got RecordIO instead"},
		{"unknown compression", func(j map[string]any) { channel(j)["CompressionType"] = "Zstd"; channel(j)["InputMode"] = "Pipe" }, "ValidationException", "[None, Gzip]"},
		{"unknown distribution", func(j map[string]any) {
			channel(j)["DataSource"] = map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://data/train/", "S3DataDistributionType": "Sharded"}}
		}, "ValidationException", "[FullyReplicated, ShardedByS3Key]"},
		{"shuffle without seed", func(j map[string]any) { channel(j)["ShuffleConfig"] = map[string]any{} }, "ValidationException", "shuffleConfig.seed"},
		{"zero hosts", func(j map[string]any) { j["ResourceConfig"].(map[string]any)["InstanceCount"] = 0 }, "ValidationException", "InstanceCount"},
		{"1000 hosts", func(j map[string]any) { j["ResourceConfig"].(map[string]any)["InstanceCount"] = 1000 }, "ValidationException", "InstanceCount"},
		{"bad output", func(j map[string]any) { j["OutputDataConfig"] = map[string]any{"S3OutputPath": "http://x"} }, "ValidationException", "S3OutputPath"},
		{"bad channel uri", func(j map[string]any) {
			j["InputDataConfig"].([]any)[0].(map[string]any)["DataSource"] = map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3:/nope"}}
		}, "ValidationException", "S3Uri"},
		{"no runtime", func(j map[string]any) { delete(j, "StoppingCondition") }, "ValidationException", "MaxRuntimeInSeconds"},
	} {
		status, out := e.call("CreateTrainingJob", e.job("j1", tc.mod), e.admin)
		if status != 400 || out["__type"] != tc.code || !strings.Contains(out["message"].(string), tc.msg) {
			t.Errorf("%s: %d %v", tc.name, status, out)
		}
	}
	var n int
	e.db.QueryRow(`SELECT COUNT(*) FROM sm_training_jobs`).Scan(&n)
	if n != 0 {
		t.Fatalf("invalid requests created %d jobs", n)
	}
}

// channel is a job's first channel.
func channel(j map[string]any) map[string]any {
	return j["InputDataConfig"].([]any)[0].(map[string]any)
}

// Pipe and FastFile jobs are accepted, and DescribeTrainingJob returns
// their channels as given.
func TestInputModesAccepted(t *testing.T) {
	e := newEnv(t)
	close(e.runner.hold)
	pipe := e.job("pipe", func(j map[string]any) {
		j["AlgorithmSpecification"].(map[string]any)["TrainingInputMode"] = "Pipe"
		c := channel(j)
		c["CompressionType"], c["RecordWrapperType"] = "Gzip", "RecordIO"
		c["ShuffleConfig"] = map[string]any{"Seed": 42}
		c["DataSource"].(map[string]any)["S3DataSource"].(map[string]any)["S3DataDistributionType"] = "ShardedByS3Key"
		j["InputDataConfig"] = append(j["InputDataConfig"].([]any), map[string]any{"ChannelName": "fast", "InputMode": "FastFile",
			"DataSource": map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://data/fast/"}}})
	})
	if status, out := e.call("CreateTrainingJob", pipe, e.admin); status != 200 {
		t.Fatalf("Pipe job refused: %d %v", status, out)
	}
	_, d := e.call("DescribeTrainingJob", map[string]string{"TrainingJobName": "pipe"}, e.admin)
	got, _ := json.Marshal(d["InputDataConfig"])
	want, _ := json.Marshal(pipe["InputDataConfig"])
	if string(got) != string(want) {
		t.Fatalf("InputDataConfig\n got %s\nwant %s", got, want)
	}
	if m := d["AlgorithmSpecification"].(map[string]any)["TrainingInputMode"]; m != "Pipe" {
		t.Fatalf("TrainingInputMode %v", m)
	}
}

func TestLifecycleStopAndRestart(t *testing.T) {
	e := newEnv(t)
	status, out := e.call("CreateTrainingJob", e.job("good", nil), e.admin)
	if status != 200 || !strings.HasSuffix(out["TrainingJobArn"].(string), ":training-job/good") {
		t.Fatalf("create: %d %v", status, out)
	}
	if status, out := e.call("CreateTrainingJob", e.job("good", nil), e.admin); status != 400 || out["__type"] != "ResourceInUse" {
		t.Fatalf("duplicate: %d %v", status, out)
	}
	e.runner.outcome = Outcome{Status: Completed, Secondary: "Completed", ModelArtifacts: "s3://models/out/good/output/model.tar.gz"}
	close(e.runner.hold)
	d := waitStatus(t, e, "good", Completed)
	var seen []string
	for _, tr := range d["SecondaryStatusTransitions"].([]any) {
		seen = append(seen, tr.(map[string]any)["Status"].(string))
	}
	if strings.Join(seen, ",") != "Starting,Downloading,Training,Uploading,Completed" {
		t.Fatalf("transitions %v", seen)
	}
	if d["ModelArtifacts"].(map[string]any)["S3ModelArtifacts"] != "s3://models/out/good/output/model.tar.gz" || d["TrainingStartTime"] == nil || d["RoleArn"] != e.role {
		t.Fatalf("describe: %v", d)
	}

	// StopTrainingJob on a running job.
	e.runner.hold = make(chan struct{})
	e.call("CreateTrainingJob", e.job("tostop", nil), e.admin)
	waitSecondary(t, e, "tostop", "Training")
	if status, out := e.call("StopTrainingJob", map[string]string{"TrainingJobName": "tostop"}, e.admin); status != 200 {
		t.Fatalf("stop: %d %v", status, out)
	}
	waitStatus(t, e, "tostop", Stopped)

	// A job running when convoy goes away ends Failed, with the reason.
	e.call("CreateTrainingJob", e.job("orphan", nil), e.admin)
	waitSecondary(t, e, "orphan", "Training")
	e.db.Exec(`UPDATE sm_training_jobs SET status = 'InProgress' WHERE name = 'orphan'`)
	e.open() // a new convoy on the same database
	d = waitStatus(t, e, "orphan", Failed)
	if !strings.Contains(d["FailureReason"].(string), "convoy stopped") {
		t.Fatalf("orphan: %v", d)
	}

	// List: filters, order, pagination.
	_, l := e.call("ListTrainingJobs", map[string]any{"MaxResults": 2, "SortBy": "Name", "SortOrder": "Ascending"}, e.admin)
	if s := l["TrainingJobSummaries"].([]any); len(s) != 2 || s[0].(map[string]any)["TrainingJobName"] != "good" || l["NextToken"] == nil {
		t.Fatalf("list page 1: %v", l)
	}
	_, l = e.call("ListTrainingJobs", map[string]any{"MaxResults": 2, "SortBy": "Name", "SortOrder": "Ascending", "NextToken": l["NextToken"]}, e.admin)
	if s := l["TrainingJobSummaries"].([]any); len(s) != 1 || s[0].(map[string]any)["TrainingJobName"] != "tostop" || l["NextToken"] != nil {
		t.Fatalf("list page 2: %v", l)
	}
	_, l = e.call("ListTrainingJobs", map[string]any{"StatusEquals": "Failed"}, e.admin)
	if s := l["TrainingJobSummaries"].([]any); len(s) != 1 {
		t.Fatalf("list by status: %v", l)
	}
	if status, out := e.call("DescribeTrainingJob", map[string]string{"TrainingJobName": "nope"}, e.admin); status != 400 || out["__type"] != "ResourceNotFound" {
		t.Fatalf("describe missing: %d %v", status, out)
	}
}

func waitSecondary(t *testing.T, e *env, name, sec string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, d := e.call("DescribeTrainingJob", map[string]string{"TrainingJobName": name}, e.admin)
		if d["SecondaryStatus"] == sec {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s secondary %v, want %s", name, d["SecondaryStatus"], sec)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.ids.CreateUser(ctx, "dev", "")
	k, _, _ := e.ids.CreateAccessKey(ctx, "dev")
	dev, _ := e.ids.UserPrincipal(ctx, "dev", k.ID)
	if status, out := e.call("CreateTrainingJob", e.job("j", nil), dev); status != 403 || out["__type"] != "AccessDeniedException" {
		t.Fatalf("no permission: %d %v", status, out)
	}
	e.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "sm", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sagemaker:*","Resource":"*"}]}`)
	if status, out := e.call("CreateTrainingJob", e.job("j", nil), dev); status != 403 || !strings.Contains(out["message"].(string), "iam:PassRole") {
		t.Fatalf("no PassRole: %d %v", status, out)
	}
	// A policy requiring inter-container encryption refuses a job without it.
	e.ids.PutInlinePolicy(ctx, iam.KindUser, "dev", "pass", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:PassRole","Resource":"*"},
		{"Effect":"Deny","Action":"sagemaker:CreateTrainingJob","Resource":"*","Condition":{"Bool":{"sagemaker:NetworkIsolation":"false"}}}]}`)
	if status, out := e.call("CreateTrainingJob", e.job("j", nil), dev); status != 403 {
		t.Fatalf("condition ignored: %d %v", status, out)
	}
	close(e.runner.hold)
	e.runner.outcome = Outcome{Status: Completed, Secondary: "Completed"}
	if status, out := e.call("CreateTrainingJob", e.job("j", func(j map[string]any) { j["EnableNetworkIsolation"] = true }), dev); status != 200 {
		t.Fatalf("allowed job: %d %v", status, out)
	}
	waitStatus(t, e, "j", Completed)
}

func TestTags(t *testing.T) {
	e := newEnv(t)
	close(e.runner.hold)
	e.runner.outcome = Outcome{Status: Completed, Secondary: "Completed"}
	_, out := e.call("CreateTrainingJob", e.job("tagged", func(j map[string]any) {
		j["Tags"] = []any{map[string]any{"Key": "team", "Value": "oncology"}}
	}), e.admin)
	arn := out["TrainingJobArn"].(string)
	e.call("AddTags", map[string]any{"ResourceArn": arn, "Tags": []any{map[string]any{"Key": "phi", "Value": "yes"}}}, e.admin)
	_, l := e.call("ListTags", map[string]any{"ResourceArn": arn, "MaxResults": 1}, e.admin)
	if tags := l["Tags"].([]any); len(tags) != 1 || tags[0].(map[string]any)["Key"] != "phi" || l["NextToken"] == nil {
		t.Fatalf("list page 1: %v", l)
	}
	_, l = e.call("ListTags", map[string]any{"ResourceArn": arn, "MaxResults": 1, "NextToken": l["NextToken"]}, e.admin)
	if tags := l["Tags"].([]any); len(tags) != 1 || tags[0].(map[string]any)["Value"] != "oncology" || l["NextToken"] != nil {
		t.Fatalf("list page 2: %v", l)
	}
	e.call("DeleteTags", map[string]any{"ResourceArn": arn, "TagKeys": []string{"phi"}}, e.admin)
	_, l = e.call("ListTags", map[string]any{"ResourceArn": arn}, e.admin)
	if tags := l["Tags"].([]any); len(tags) != 1 {
		t.Fatalf("after delete: %v", l)
	}
	if status, out := e.call("ListTags", map[string]any{"ResourceArn": arn + "x"}, e.admin); status != 400 || out["__type"] != "ResourceNotFound" {
		t.Fatalf("unknown resource: %d %v", status, out)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	close(e.runner.hold)
	e.runner.outcome = Outcome{Status: Failed, Secondary: "Failed", FailureReason: "x"}
	reg := prometheus.NewRegistry()
	e.svc.RegisterMetrics(reg)
	e.call("CreateTrainingJob", e.job("m1", nil), e.admin)
	waitStatus(t, e, "m1", Failed)
	if got := gaugeValue(t, reg, "Failed"); got != 1 {
		t.Fatalf("failed jobs gauge %v, want 1", got)
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, status string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "status" && l.GetValue() == status {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no gauge for %s", status)
	return 0
}
