package e2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// Pipe mode for real: the aws CLI creates a job of two hosts whose channels
// are streamed into FIFOs (gzip-decompressed, RecordIO-wrapped, shuffled
// and sharded), next to a sharded File channel and a FastFile channel; the
// trainer digests what it read in two epochs, and the test checks the
// digests against the uploaded objects. Also: a FastFile job, Gzip refused
// in File mode, an object the role may not read failing the job mid-epoch,
// and Pipe data never on disk.
func TestTrainingPipeMode(t *testing.T) {
	cli := harness.Tool(t, "aws")
	c := harness.Start(t, harness.Options{Args: []string{"--training-stop-grace", "5s"}})
	ctx := harness.Context(t)
	jobsReady(t, c, cli, "input", "output")
	const canary = "CANARY-pipe-4f1c9a"
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		return b.String()
	}
	data := map[string]string{
		"gz/g1.csv.gz": gz("g,1\n"), "gz/g2.csv.gz": gz(strings.Repeat("g,2\n", 5000)), "gz/g3.csv.gz": gz("g,3\n"),
		"rec/r1": "abcde", "rec/r2": "abcdef", "rec/r3": "abcdefgh",
		"files/f1": "f1\n", "files/f2": "f2\n", "files/f3": "f3\n", "files/f4": "f4\n",
		"fast/x1": "x1\n", "fast/sub/x2": "x2\n",
		"train/a.csv": "1,2,3\n", "train/sub/b.csv": "4,5,6\n",
		"deny/a": "allowed\n", "deny/b": "denied\n",
		"pcanary/c": strings.Repeat(canary+"\n", 1000),
	}
	var plain []string
	for i := range 6 {
		k := fmt.Sprintf("plain/p%02d", i)
		data[k] = fmt.Sprintf("plain object %d\n", i)
		plain = append(plain, k)
	}
	admin := c.S3(t)
	for k, v := range data {
		if _, err := admin.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String(k), Body: strings.NewReader(v)}); err != nil {
			t.Fatal(err)
		}
	}
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "models"}), "KeyMetadata", "Arn")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*"]},
		{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::input/deny/b"},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "trainer", "--policy-name", "data", "--policy-document", policy})

	ch := func(name, prefix string, extra map[string]any) map[string]any {
		m := map[string]any{"ChannelName": name, "DataSource": map[string]any{"S3DataSource": map[string]any{"S3DataType": "S3Prefix", "S3Uri": "s3://input/" + prefix}}}
		for k, v := range extra {
			if k == "S3DataDistributionType" {
				m["DataSource"].(map[string]any)["S3DataSource"].(map[string]any)[k] = v
				continue
			}
			m[k] = v
		}
		return m
	}
	pipeJob := func(name string, hosts int, hps map[string]string, channels ...any) map[string]any {
		job := trainingJob(name, role, key, hosts, 300, hps)
		job["AlgorithmSpecification"].(map[string]any)["TrainingInputMode"] = "Pipe"
		job["InputDataConfig"] = channels
		return job
	}
	check := map[string]string{"mode": "pipe_check"}
	pipe := pipeJob("pipe-ok", 2, check,
		ch("gz", "gz/", map[string]any{"CompressionType": "Gzip"}),
		ch("rec", "rec/", map[string]any{"RecordWrapperType": "RecordIO"}),
		ch("plain", "plain/", map[string]any{"ShuffleConfig": map[string]any{"Seed": 11}, "S3DataDistributionType": "ShardedByS3Key"}),
		ch("files", "files/", map[string]any{"InputMode": "File", "S3DataDistributionType": "ShardedByS3Key"}),
		ch("fast", "fast/", map[string]any{"InputMode": "FastFile"}))
	createTrainingJob(t, c, cli, pipe)
	fast := trainingJob("fastfile-ok", role, key, 1, 300, map[string]string{"mode": "train"})
	fast["AlgorithmSpecification"].(map[string]any)["TrainingInputMode"] = "FastFile"
	createTrainingJob(t, c, cli, fast)
	createTrainingJob(t, c, cli, pipeJob("pipe-denied", 1, check, ch("deny", "deny/", nil)))
	createTrainingJob(t, c, cli, pipeJob("pipe-canary", 1, map[string]string{"mode": "sleep"}, ch("c", "pcanary/", nil)))
	ended := func(map[string]any) bool { return false }

	t.Run("pipe channels", func(t *testing.T) {
		d := waitTrainingJob(t, c, cli, "pipe-ok", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("pipe-ok: %v", d)
		}
		// DescribeTrainingJob returns the channels as given.
		if got, want := mustJSON(d["InputDataConfig"]), mustJSON(pipe["InputDataConfig"]); !bytes.Equal(got, want) {
			t.Errorf("InputDataConfig\n got %s\nwant %s", got, want)
		}
		m := modelFiles(t, c, cli, str(d, "ModelArtifacts", "S3ModelArtifacts"))["model.txt"]
		sum := func(s string) string {
			h := sha256.Sum256([]byte(s))
			return fmt.Sprintf("%d %s", len(s), hex.EncodeToString(h[:]))
		}
		record := func(s string) string {
			var h [8]byte
			binary.LittleEndian.PutUint32(h[:4], 0xced7230a)
			binary.LittleEndian.PutUint32(h[4:], uint32(len(s)))
			return string(h[:]) + s + strings.Repeat("\x00", (4-len(s)%4)%4)
		}
		gunzipped := "g,1\n" + strings.Repeat("g,2\n", 5000) + "g,3\n"
		records := record("abcde") + record("abcdef") + record("abcdefgh")
		// algo-1 is host 0 of 2: the shuffled order's objects 0, 2 and 4,
		// the order given by SHA-256("<seed>/<epoch>/s3://bucket/key").
		shuffled := func(epoch int) string {
			order := slices.Clone(plain)
			slices.SortFunc(order, func(a, b string) int {
				ha := sha256.Sum256(fmt.Appendf(nil, "11/%d/s3://input/%s", epoch, a))
				hb := sha256.Sum256(fmt.Appendf(nil, "11/%d/s3://input/%s", epoch, b))
				return bytes.Compare(ha[:], hb[:])
			})
			return data[order[0]] + data[order[2]] + data[order[4]]
		}
		if shuffled(0) == shuffled(1) {
			t.Fatal("the test's shuffle gives host 0 the same objects in both epochs; pick another seed")
		}
		files := func(prefix string, rels ...string) string {
			h := sha256.New()
			for _, r := range rels {
				fmt.Fprintf(h, "%s\n%d\n%s", r, len(data[prefix+r]), data[prefix+r])
			}
			return fmt.Sprintf("%d files %s", len(rels), hex.EncodeToString(h.Sum(nil)))
		}
		for _, want := range []string{
			"host=algo-1 hosts=algo-1,algo-2\n",
			"channel gz mode=Pipe wrapper=None\n",
			"pipe gz_0 " + sum(gunzipped) + "\n", "pipe gz_1 " + sum(gunzipped) + "\n",
			"channel rec mode=Pipe wrapper=RecordIO\n",
			"pipe rec_0 " + sum(records) + "\n", "pipe rec_1 " + sum(records) + "\n",
			"pipe plain_0 " + sum(shuffled(0)) + "\n", "pipe plain_1 " + sum(shuffled(1)) + "\n",
			// The container may read its FIFOs, not write them.
			"write gz_2: denied\n", "write rec_2: denied\n", "write plain_2: denied\n",
			// File channels sit next to the FIFOs; a sharded one holds the
			// host's objects (0 and 2 of 4 in key order).
			"channel files mode=File wrapper=None\n", "files files " + files("files/", "f1", "f3") + "\n",
			"channel fast mode=FastFile wrapper=None\n", "files fast " + files("fast/", "sub/x2", "x1") + "\n",
		} {
			if !strings.Contains(m, want) {
				t.Errorf("model.txt lacks %q:\n%s", want, m)
			}
		}
	})

	t.Run("fastfile job", func(t *testing.T) {
		d := waitTrainingJob(t, c, cli, "fastfile-ok", ended)
		if str(d, "TrainingJobStatus") != "Completed" {
			t.Fatalf("fastfile-ok: %v", d)
		}
		h := sha256.New()
		for _, f := range []string{"a.csv", "sub/b.csv"} {
			fmt.Fprintf(h, "%s\n%d\n%s", f, len(data["train/"+f]), data["train/"+f])
		}
		m := modelFiles(t, c, cli, str(d, "ModelArtifacts", "S3ModelArtifacts"))["model.txt"]
		for _, want := range []string{"train-mode=FastFile content=text/csv\n", "digest=2 files " + hex.EncodeToString(h.Sum(nil)) + "\n"} {
			if !strings.Contains(m, want) {
				t.Errorf("model.txt lacks %q:\n%s", want, m)
			}
		}
	})

	t.Run("object denied mid-epoch", func(t *testing.T) {
		d := waitTrainingJob(t, c, cli, "pipe-denied", ended)
		reason := str(d, "FailureReason")
		if str(d, "TrainingJobStatus") != "Failed" || !strings.HasPrefix(reason, "ClientError: Data download failed: s3://input/deny/b for channel deny with role "+role) ||
			!strings.Contains(reason, "AccessDenied") {
			t.Fatalf("pipe-denied: %v", d)
		}
	})

	t.Run("pipe data never on disk", func(t *testing.T) {
		waitTrainingJob(t, c, cli, "pipe-canary", func(d map[string]any) bool { return str(d, "SecondaryStatus") == "Training" })
		// Not even in the volume's plaintext view: nothing is staged.
		if hits := grepData(t, c.DataDir, canary); len(hits) > 0 {
			t.Fatalf("pipe mode input on disk: %v", hits)
		}
		awsJSON(t, c, cli, []string{"sagemaker", "stop-training-job", "--training-job-name", "pipe-canary"})
		if d := waitTrainingJob(t, c, cli, "pipe-canary", ended); str(d, "TrainingJobStatus") != "Stopped" {
			t.Fatalf("pipe-canary: %v", d)
		}
	})

	t.Run("gzip in file mode", func(t *testing.T) {
		job := trainingJob("gzip-file", role, key, 1, 300, map[string]string{"mode": "train"})
		job["InputDataConfig"] = []any{ch("train", "gz/", map[string]any{"CompressionType": "Gzip"})}
		file := writeFile(t, t.TempDir()+"/job.json", mustJSON(job))
		r := c.AWS(t, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file}, "AWS_MAX_ATTEMPTS=1")
		if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationException)") ||
			!strings.Contains(r.Stderr, "Invalid compression type for channel train: File mode only supports NONE, got Gzip instead") {
			t.Fatalf("gzip in File mode: %v\n%s", r.Err, r.Stderr)
		}
	})
}
