package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// trainerImage builds testdata/trainer as a static binary and writes it as
// an OCI image layout whose ENTRYPOINT is the binary (so it runs as
// `/trainer train`).
func trainerImage(t *testing.T) string {
	return harness.GoImage(t, "./testdata/trainer", "trainer")
}

// jobsReady imports the trainer image into c as trainer:1 and makes the
// buckets: how every test of jobs and endpoints begins.
func jobsReady(t *testing.T, c *harness.Convoy, cli string, buckets ...string) {
	t.Helper()
	imp := exec.Command(harness.Binary(t), "images", "import", "--data", c.DataDir, trainerImage(t), "trainer:1")
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("images import: %v\n%s", err, out)
	}
	for _, b := range buckets {
		if r := c.AWS(t, cli, []string{"s3", "mb", "s3://" + b}); r.Err != nil {
			t.Fatalf("s3 mb %s: %v\n%s", b, r.Err, r.Stderr)
		}
	}
}

// trainingJob is a CreateTrainingJob request for the trainer image.
func trainingJob(name, role, key string, hosts, maxRuntime int, hps map[string]string) map[string]any {
	return map[string]any{
		"TrainingJobName": name,
		"RoleArn":         role,
		"HyperParameters": hps,
		"AlgorithmSpecification": map[string]any{
			"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1", "TrainingInputMode": "File"},
		"InputDataConfig": []any{map[string]any{"ChannelName": "train", "ContentType": "text/csv", "DataSource": map[string]any{
			"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://input/train/"}}}},
		"OutputDataConfig":  map[string]any{"S3OutputPath": "s3://output/models", "KmsKeyId": key},
		"ResourceConfig":    map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": hosts, "VolumeSizeInGB": 1},
		"StoppingCondition": map[string]any{"MaxRuntimeInSeconds": maxRuntime},
		"Environment":       map[string]string{"JOB_ENV": "yes"},
	}
}

// Training jobs run for real: the aws CLI creates them, convoy stages the
// input from S3 with the job role's credentials, runs the trainer image in
// runc containers, and uploads the model encrypted under the job's KMS key.
func TestTrainingJobsEndToEnd(t *testing.T) {
	cli := harness.Tool(t, "aws")
	c := harness.Start(t, harness.Options{Args: []string{"--training-stop-grace", "5s"}})
	ctx := harness.Context(t)

	jobsReady(t, c, cli, "input", "output", "secret")
	admin := c.S3(t)
	const canary = "CANARY-volume-9b2e71"
	data := map[string]string{"train/a.csv": "1,2,3\n", "train/sub/b.csv": "4,5,6\n", "other/c.csv": "not staged\n",
		"canary/records.csv":   strings.Repeat(canary+"\n", 1000),
		"manifests/train.json": `[{"prefix": "s3://input/train/"}, "a.csv", "sub/b.csv"]`}
	for k, v := range data {
		if _, err := admin.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String(k), Body: strings.NewReader(v)}); err != nil {
			t.Fatal(err)
		}
	}
	admin.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("secret"), Key: aws.String("s"), Body: strings.NewReader("secret")})
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "models"}), "KeyMetadata", "Arn")

	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "trainer", "--policy-name", "data", "--policy-document", policy})

	create := func(job map[string]any) { t.Helper(); createTrainingJob(t, c, cli, job) }
	describe := func(name string) map[string]any {
		return awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", name})
	}
	waitFor := func(name string, done func(map[string]any) bool) map[string]any {
		t.Helper()
		return waitTrainingJob(t, c, cli, name, done)
	}
	ended := func(map[string]any) bool { return false }
	model := func(t *testing.T, uri string) map[string]string { t.Helper(); return modelFiles(t, c, cli, uri) }

	started := time.Now()
	hp := map[string]string{"mode": "train", "probe_allowed": "s3://input/train/a.csv", "probe_denied": "s3://secret/s", "lr": "0.1"}
	manifest := trainingJob("train-manifest", role, key, 1, 300, map[string]string{"mode": "train"})
	manifest["InputDataConfig"].([]any)[0].(map[string]any)["DataSource"] = map[string]any{
		"S3DataSource": map[string]any{"S3DataType": "ManifestFile", "S3Uri": "s3://input/manifests/train.json"}}
	create(manifest)
	ok := trainingJob("train-ok", role, key, 1, 300, hp)
	ok["ResourceConfig"].(map[string]any)["VolumeKmsKeyId"] = key
	create(ok)
	create(trainingJob("train-fail", role, key, 1, 300, map[string]string{"mode": "fail"}))
	create(trainingJob("train-pair", role, key, 2, 300, map[string]string{"mode": "pair"}))
	create(trainingJob("train-timeout", role, key, 1, 3, map[string]string{"mode": "sleep"}))
	stop := trainingJob("train-stop", role, key, 1, 300, map[string]string{"mode": "sleep"})
	stop["InputDataConfig"].([]any)[0].(map[string]any)["DataSource"] = map[string]any{
		"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://input/canary/"}}
	create(stop)
	otherKey := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "not the role's"}), "KeyMetadata", "Arn")
	badVolume := trainingJob("train-volume-key", role, key, 1, 300, map[string]string{"mode": "train"})
	badVolume["ResourceConfig"].(map[string]any)["VolumeKmsKeyId"] = otherKey
	create(badVolume)
	isolated := trainingJob("train-isolated", role, key, 1, 300, map[string]string{"mode": "reach", "probe_allowed": "s3://input/train/a.csv"})
	isolated["EnableNetworkIsolation"] = true
	create(isolated)
	denied := trainingJob("train-denied", role, key, 1, 300, map[string]string{"mode": "train"})
	denied["InputDataConfig"].([]any)[0].(map[string]any)["DataSource"] = map[string]any{
		"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://secret/"}}
	create(denied)

	t.Run("completed", func(t *testing.T) {
		d := waitFor("train-ok", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("train-ok: %v", d)
		}
		if got := transitions(d); got != "Starting,Downloading,Training,Uploading,Completed" {
			t.Fatalf("transitions %s", got)
		}
		uri := str(d, "ModelArtifacts", "S3ModelArtifacts")
		if uri != "s3://output/models/train-ok/output/model.tar.gz" {
			t.Fatalf("model artifacts %q", uri)
		}
		m := model(t, uri)["model.txt"]
		h := sha256.New()
		for _, f := range []string{"a.csv", "sub/b.csv"} {
			fmt.Fprintf(h, "%s\n%d\n%s", f, len(data["train/"+f]), data["train/"+f])
		}
		for _, want := range []string{
			"host=algo-1 hosts=algo-1\n",
			`hps={"lr":"0.1","mode":"train"`,
			"train-mode=File content=text/csv\n",
			"digest=2 files " + hex.EncodeToString(h.Sum(nil)) + "\n",
			"env SM_CHANNEL_TRAIN=/opt/ml/input/data/train TRAINING_JOB_NAME=train-ok SM_CURRENT_HOST=algo-1\n",
			"allowed=ok 1,2,3\n",
			"denied=error AccessDenied\n",
			// The SDK found the role's credentials at the endpoint; no key
			// is in the environment.
			"credential variables: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI\n",
		} {
			if !strings.Contains(m, want) {
				t.Errorf("model.txt lacks %q:\n%s", want, m)
			}
		}
		logs := awsJSON(t, c, cli, []string{"logs", "get-log-events", "--log-group-name", "/aws/sagemaker/TrainingJobs",
			"--log-stream-name", "train-ok/algo-1-1", "--start-from-head"})
		if !strings.Contains(fmt.Sprint(logs["events"]), "trainer on algo-1, mode train") {
			t.Errorf("get-log-events lacks the trainer's line: %v", logs)
		}
		head := awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", "output", "--key", "models/train-ok/output/model.tar.gz"})
		if str(head, "ServerSideEncryption") != "aws:kms" || str(head, "SSEKMSKeyId") != key {
			t.Fatalf("model.tar.gz encryption: %v", head)
		}
		out := model(t, "s3://output/models/train-ok/output/output.tar.gz")
		if out["metrics.txt"] != "loss=0.1\n" {
			t.Fatalf("output.tar.gz: %v", out)
		}
	})

	t.Run("manifest file", func(t *testing.T) {
		d := waitFor("train-manifest", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("train-manifest: %v", d)
		}
		h := sha256.New()
		for _, f := range []string{"a.csv", "sub/b.csv"} {
			fmt.Fprintf(h, "%s\n%d\n%s", f, len(data["train/"+f]), data["train/"+f])
		}
		if m := model(t, str(d, "ModelArtifacts", "S3ModelArtifacts"))["model.txt"]; !strings.Contains(m, "digest=2 files "+hex.EncodeToString(h.Sum(nil))+"\n") {
			t.Fatalf("the manifest's objects were not staged as listed:\n%s", m)
		}
	})

	t.Run("algorithm failure", func(t *testing.T) {
		d := waitFor("train-fail", ended)
		if str(d, "TrainingJobStatus") != "Failed" || str(d, "FailureReason") != "bad data" || str(d, "SecondaryStatus") != "Failed" {
			t.Fatalf("train-fail: %v", d)
		}
	})

	t.Run("two hosts", func(t *testing.T) {
		d := waitFor("train-pair", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("train-pair: %v", d)
		}
		m := model(t, str(d, "ModelArtifacts", "S3ModelArtifacts"))["model.txt"]
		if !strings.Contains(m, "host=algo-1 hosts=algo-1,algo-2\n") || !strings.Contains(m, "peer said: hello from algo-2\n") {
			t.Fatalf("model.txt:\n%s", m)
		}
	})

	t.Run("max runtime", func(t *testing.T) {
		d := waitFor("train-timeout", ended)
		if str(d, "TrainingJobStatus") != "Stopped" || str(d, "SecondaryStatus") != "MaxRuntimeExceeded" {
			t.Fatalf("train-timeout: %v", d)
		}
		if got := transitions(d); got != "Starting,Downloading,Training,Stopping,Uploading,MaxRuntimeExceeded" {
			t.Fatalf("train-timeout transitions %s", got)
		}
		if m := model(t, str(d, "ModelArtifacts", "S3ModelArtifacts")); m["terminated"] != "got SIGTERM\n" {
			t.Fatalf("the trainer did not see SIGTERM: %v", m)
		}
	})

	t.Run("stop", func(t *testing.T) {
		waitFor("train-stop", func(d map[string]any) bool { return str(d, "SecondaryStatus") == "Training" })
		// While the job runs, its staged input is readable through the
		// volume's mount and nowhere in plaintext on disk.
		vol := filepath.Join(c.DataDir, "jobs", "train-stop", "volume")
		if b, err := os.ReadFile(filepath.Join(vol, "input", "data", "train", "records.csv")); err != nil || !strings.Contains(string(b), canary) {
			t.Fatalf("staged input through the volume: %v", err)
		}
		if hits := grepData(t, c.DataDir, canary, vol); len(hits) > 0 {
			t.Fatalf("training input in plaintext at rest: %v", hits)
		}
		creds := containerCredentials(t, c, "train-stop", role)
		awsJSON(t, c, cli, []string{"sagemaker", "stop-training-job", "--training-job-name", "train-stop"})
		d := waitFor("train-stop", ended)
		if str(d, "TrainingJobStatus") != "Stopped" || str(d, "SecondaryStatus") != "Stopped" {
			t.Fatalf("train-stop: %v", d)
		}
		revoked(t, creds)
		if m := model(t, str(d, "ModelArtifacts", "S3ModelArtifacts")); m["terminated"] != "got SIGTERM\n" {
			t.Fatalf("the trainer did not see SIGTERM: %v", m)
		}
	})

	t.Run("network isolation", func(t *testing.T) {
		d := waitFor("train-isolated", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("train-isolated: %v", d)
		}
		m := model(t, str(d, "ModelArtifacts", "S3ModelArtifacts"))["model.txt"]
		if !strings.Contains(m, "reach=fail ") || !strings.Contains(m, "dial api=fail credentials=fail\n") {
			t.Fatalf("an isolated job reached convoy:\n%s", m)
		}
		if !strings.Contains(m, "credential variables:\n") {
			t.Fatalf("an isolated job was given credentials:\n%s", m)
		}
	})

	t.Run("input access denied", func(t *testing.T) {
		d := waitFor("train-denied", ended)
		if str(d, "TrainingJobStatus") != "Failed" || !strings.HasPrefix(str(d, "FailureReason"), "ClientError: Data download failed") ||
			!strings.Contains(str(d, "FailureReason"), "AccessDenied") {
			t.Fatalf("train-denied: %v", d)
		}
	})

	t.Run("volume key the role cannot use", func(t *testing.T) {
		d := waitFor("train-volume-key", ended)
		if str(d, "TrainingJobStatus") != "Failed" || !strings.Contains(str(d, "FailureReason"), "VolumeKmsKeyId "+otherKey+" cannot be used") {
			t.Fatalf("train-volume-key: %v", d)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		// A user without iam:PassRole on the role may not hand it to a job.
		awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", "analyst"})
		awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", "analyst", "--policy-name", "sm", "--policy-document",
			`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sagemaker:*","Resource":"*"}]}`})
		k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", "analyst"})
		analyst := []string{"AWS_ACCESS_KEY_ID=" + str(k, "AccessKey", "AccessKeyId"), "AWS_SECRET_ACCESS_KEY=" + str(k, "AccessKey", "SecretAccessKey")}
		for _, tc := range []struct {
			name, code, msg string
			edit            func(j map[string]any)
			env             []string
		}{
			{"bad-name_", "ValidationException", "trainingJobName", func(j map[string]any) {}, nil},
			{"no-role", "ValidationException", "roleArn", func(j map[string]any) { j["RoleArn"] = "trainer-role-given-by-name" }, nil},
			{"missing-role", "ValidationException", "Could not assume role", func(j map[string]any) {
				j["RoleArn"] = strings.Replace(role, "role/trainer", "role/nobody", 1)
			}, nil},
			{"not-passable", "AccessDenied", "iam:PassRole", func(j map[string]any) {}, analyst},
			{"no-image", "ValidationException", "convoy images import", func(j map[string]any) {
				j["AlgorithmSpecification"].(map[string]any)["TrainingImage"] = "nope:1"
			}, nil},
			{"bad-input-uri", "ValidationException", "S3Uri", func(j map[string]any) {
				j["InputDataConfig"].([]any)[0].(map[string]any)["DataSource"] = map[string]any{
					"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "https://input/train/"}}
			}, nil},
			{"bad-output-uri", "ValidationException", "S3OutputPath", func(j map[string]any) {
				j["OutputDataConfig"] = map[string]any{"S3OutputPath": "s3://Not_A_Bucket"}
			}, nil},
			{"zero-hosts", "ValidationException", "InstanceCount", func(j map[string]any) {
				j["ResourceConfig"].(map[string]any)["InstanceCount"] = 0
			}, nil},
			{"many-hosts", "ValidationException", "InstanceCount", func(j map[string]any) {
				j["ResourceConfig"].(map[string]any)["InstanceCount"] = 1000
			}, nil},
		} {
			job := trainingJob(tc.name, role, key, 1, 300, map[string]string{"mode": "train"})
			tc.edit(job)
			file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
			r := c.AWS(t, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file}, append(tc.env, "AWS_MAX_ATTEMPTS=1")...)
			if r.Err == nil || !strings.Contains(r.Stderr, tc.code) || !strings.Contains(r.Stderr, tc.msg) {
				t.Errorf("%s: want %s mentioning %q, got %v\n%s", tc.name, tc.code, tc.msg, r.Err, r.Stderr)
			}
		}
		// Nothing was created or started for any of them.
		list := awsJSON(t, c, cli, []string{"sagemaker", "list-training-jobs", "--name-contains", "-"})
		for _, s := range list["TrainingJobSummaries"].([]any) {
			name := s.(map[string]any)["TrainingJobName"].(string)
			for _, bad := range []string{"no-role", "missing-role", "not-passable", "no-image", "bad-input-uri", "bad-output-uri", "zero-hosts", "many-hosts"} {
				if name == bad {
					t.Errorf("rejected job %s is listed", name)
				}
			}
		}
	})

	t.Run("unknown image", func(t *testing.T) {
		job := trainingJob("no-image", role, key, 1, 300, map[string]string{"mode": "train"})
		job["AlgorithmSpecification"].(map[string]any)["TrainingImage"] = "nope:1"
		file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
		r := c.AWS(t, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file}, "AWS_MAX_ATTEMPTS=1")
		if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationException)") || !strings.Contains(r.Stderr, "convoy images import") {
			t.Fatalf("unknown image: %v\n%s", r.Err, r.Stderr)
		}
		awsFails(t, c, cli, "ResourceNotFound", []string{"sagemaker", "describe-training-job", "--training-job-name", "no-image"})
	})
	t.Logf("9 jobs ran in %s", time.Since(started).Round(time.Millisecond))

	t.Run("convoy jobs", func(t *testing.T) {
		out, err := exec.Command(harness.Binary(t), "jobs", "--data", c.DataDir).CombinedOutput()
		if err != nil {
			t.Fatalf("convoy jobs: %v\n%s", err, out)
		}
		lines := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				lines[f[0]] = l
			}
		}
		for name, want := range map[string][]string{
			"NAME":           {"STATUS", "FAILURE"},
			"train-ok":       {"training", "Completed"},
			"train-fail":     {"training", "Failed", "bad data"},
			"train-timeout":  {"Stopped", "MaxRuntimeExceeded"},
			"train-isolated": {"Completed"},
		} {
			for _, w := range want {
				if !strings.Contains(lines[name], w) {
					t.Errorf("convoy jobs: line of %s lacks %q:\n%s", name, w, out)
				}
			}
		}
	})

	// convoy stopping with a job running stops its containers and records
	// the job Failed with the reason; the restarted convoy says so too.
	create(trainingJob("train-shutdown", role, key, 1, 300, map[string]string{"mode": "sleep"}))
	waitFor("train-shutdown", func(d map[string]any) bool { return str(d, "SecondaryStatus") == "Training" })
	if err := c.Stop(); err != nil {
		t.Fatalf("stop convoy: %v", err)
	}
	c = harness.Start(t, harness.Options{DataDir: c.DataDir, Args: []string{"--training-stop-grace", "5s"}})
	if d := describe("train-shutdown"); str(d, "TrainingJobStatus") != "Failed" || !strings.Contains(str(d, "FailureReason"), "convoy stopped") {
		t.Fatalf("train-shutdown after restart: %v", d)
	}
	if out, _ := exec.Command("runc", "--root", filepath.Join(c.DataDir, "executor", "runc"), "list", "-q").Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("containers left after shutdown: %s", out)
	}

	// Nothing of the jobs is left but their logs.
	entries, _ := os.ReadDir(filepath.Join(c.DataDir, "jobs", "train-ok"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"logs"}) {
		t.Errorf("job directory holds %v, want only logs", names)
	}
}

// createTrainingJob creates a training job with the aws CLI.
func createTrainingJob(t *testing.T, c *harness.Convoy, cli string, job map[string]any) {
	t.Helper()
	file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
	out := awsJSON(t, c, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file})
	if !strings.HasSuffix(str(out, "TrainingJobArn"), ":training-job/"+strings.ToLower(job["TrainingJobName"].(string))) {
		t.Fatalf("create-training-job: %v", out)
	}
}

// waitTrainingJob describes a job until done says so or the job has ended
// (done may always say false), for at most 2 minutes.
func waitTrainingJob(t *testing.T, c *harness.Convoy, cli, name string, done func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		d := awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", name})
		if done(d) {
			return d
		}
		if s := str(d, "TrainingJobStatus"); s != "InProgress" && s != "Stopping" {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not end within 2 minutes: %v", name, d)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// modelFiles downloads a model.tar.gz (or output.tar.gz) and returns its
// regular files.
func modelFiles(t *testing.T, c *harness.Convoy, cli, uri string) map[string]string {
	t.Helper()
	local := filepath.Join(t.TempDir(), "model.tar.gz")
	if r := c.AWS(t, cli, []string{"s3", "cp", uri, local}); r.Err != nil {
		t.Fatalf("s3 cp %s: %v\n%s", uri, r.Err, r.Stderr)
	}
	return untar(t, local)
}

// grepData lists the files under dir, except under skip (mounts of
// plaintext views), that contain s.
func grepData(t *testing.T, dir, s string, skip ...string) []string {
	t.Helper()
	var hits []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a file that came and went
			}
			return err
		}
		if slices.Contains(skip, p) {
			return filepath.SkipDir
		}
		if !d.Type().IsRegular() {
			return nil
		}
		found, err := fileContains(p, []byte(s))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ESPIPE) {
				return nil // gone, or a network namespace (nsfs) file
			}
			return err
		}
		if found {
			hits = append(hits, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits
}

// fileContains searches a file for needle in bounded memory, reading only
// its data extents: a volume image is a sparse file of many GiB.
func fileContains(path string, needle []byte) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	keep := len(needle) - 1
	for off := int64(0); ; {
		data, err := f.Seek(off, 3) // SEEK_DATA
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				return false, nil // no data after off
			}
			return false, err
		}
		hole, err := f.Seek(data, 4) // SEEK_HOLE
		if err != nil {
			return false, err
		}
		carry := 0
		for pos := data; pos < hole; {
			n, err := f.ReadAt(buf[carry:min(len(buf), carry+int(hole-pos))], pos)
			if n == 0 && err != nil {
				return false, err
			}
			total := carry + n
			if bytes.Contains(buf[:total], needle) {
				return true, nil
			}
			pos += int64(n)
			// Keep the last len(needle)-1 bytes: a match may straddle reads.
			carry = min(keep, total)
			copy(buf, buf[total-carry:total])
		}
		off = hole
	}
}

// transitions lists a description's SecondaryStatusTransitions.
func transitions(d map[string]any) string {
	var seen []string
	for _, tr := range d["SecondaryStatusTransitions"].([]any) {
		seen = append(seen, tr.(map[string]any)["Status"].(string))
	}
	return strings.Join(seen, ",")
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// untar reads the regular files of a .tar.gz.
func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	files := map[string]string{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name] = string(b)
		}
	}
}
