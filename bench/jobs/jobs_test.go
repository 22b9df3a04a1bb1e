// Package jobs measures how fast convoy starts training jobs: from
// CreateTrainingJob to InProgress (the API answer), to the containers
// running (SecondaryStatus Training), to the first instruction of the
// training program, and to Completed; then the job-start throughput with 20
// jobs created back to back.
//
//	CONVOY_BENCH=1 go test -v -count=1 ./bench/jobs/
//
// The training image is testdata/hello: a static Go program whose first
// instruction prints time.Now() (the same clock as convoy's), writes a
// one-line model and exits. Each job has no input channel and uploads that
// model SSE-KMS, so Completed includes the encrypted volume, the container
// and network setup, the upload and the teardown. Plain `go test` measures
// nothing.
package jobs

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"convoy/internal/client"
	"convoy/test/e2e/harness"
)

type timing struct {
	api, training, first, completed time.Duration
}

func TestJobStart(t *testing.T) {
	if os.Getenv("CONVOY_BENCH") == "" {
		t.Skip("set CONVOY_BENCH=1 to measure job start")
	}
	c := harness.Start(t, harness.Options{})
	img := harness.GoImage(t, "./testdata/hello", "hello")
	if out, err := exec.Command(harness.Binary(t), "images", "import", "--data", c.DataDir, img, "hello:1").CombinedOutput(); err != nil {
		t.Fatalf("images import: %v\n%s", err, out)
	}
	cli := harness.Tool(t, "aws")
	for _, args := range [][]string{
		{"s3", "mb", "s3://out"},
		{"iam", "create-role", "--role-name", "bench", "--assume-role-policy-document",
			`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`},
		{"iam", "put-role-policy", "--role-name", "bench", "--policy-name", "out", "--policy-document",
			`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject","kms:GenerateDataKey"],"Resource":"*"}]}`},
	} {
		if r := c.AWS(t, cli, args); r.Err != nil {
			t.Fatalf("%v: %v\n%s", args, r.Err, r.Stderr)
		}
	}
	env, err := client.ReadEnv(c.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	api, err := client.New(env)
	if err != nil {
		t.Fatal(err)
	}
	role := "arn:aws:iam::" + accountOf(t, c, cli) + ":role/bench"
	ctx := context.Background()

	run := func(name string) timing {
		t.Helper()
		job := map[string]any{
			"TrainingJobName": name, "RoleArn": role,
			"AlgorithmSpecification": map[string]any{"TrainingImage": "hello:1", "TrainingInputMode": "File"},
			"OutputDataConfig":       map[string]any{"S3OutputPath": "s3://out/models"},
			"ResourceConfig":         map[string]any{"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
			"StoppingCondition":      map[string]any{"MaxRuntimeInSeconds": 600},
		}
		t0 := time.Now()
		var out map[string]any
		if err := api.CallJSON(ctx, "sagemaker", "SageMaker.CreateTrainingJob", job, &out); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		tm := timing{api: time.Since(t0)}
		for tm.completed == 0 {
			var d map[string]any
			if err := api.CallJSON(ctx, "sagemaker", "SageMaker.DescribeTrainingJob", map[string]any{"TrainingJobName": name}, &d); err != nil {
				t.Fatalf("describe %s: %v", name, err)
			}
			if d["SecondaryStatus"] == "Training" && tm.training == 0 {
				tm.training = time.Since(t0)
			}
			switch d["TrainingJobStatus"] {
			case "Completed":
				tm.completed = time.Since(t0)
			case "Failed", "Stopped":
				t.Fatalf("%s: %v: %v", name, d["TrainingJobStatus"], d["FailureReason"])
			}
			time.Sleep(10 * time.Millisecond)
		}
		tm.first = firstInstruction(t, c.DataDir, name).Sub(t0)
		return tm
	}

	// Sequential: one job at a time, the latency a user sees.
	const sequential = 7
	var seq []timing
	run("warm-up")
	for i := range sequential {
		seq = append(seq, run(fmt.Sprintf("seq-%d", i)))
	}
	report(t, "one at a time", seq)

	// Throughput: 20 jobs created at once.
	const queued = 20
	start := time.Now()
	par := make([]timing, queued)
	var wg sync.WaitGroup
	for i := range queued {
		wg.Add(1)
		go func() {
			defer wg.Done()
			par[i] = run(fmt.Sprintf("burst-%d", i))
		}()
	}
	wg.Wait()
	total := time.Since(start)
	report(t, "20 created at once", par)
	t.Logf("RESULT 20 jobs created at once: all Completed in %s = %.1f jobs/s", total.Round(time.Millisecond), float64(queued)/total.Seconds())
}

// accountOf reads the account id from the admin's caller identity.
func accountOf(t *testing.T, c *harness.Convoy, cli string) string {
	r := c.AWS(t, cli, []string{"sts", "get-caller-identity", "--query", "Account", "--output", "text"})
	if r.Err != nil {
		t.Fatal(r.Err, r.Stderr)
	}
	return strings.TrimSpace(r.Stdout)
}

// firstInstruction reads the time the training program printed first.
func firstInstruction(t *testing.T, dataDir, job string) time.Time {
	t.Helper()
	f, err := os.Open(filepath.Join(dataDir, "jobs", job, "logs", "algo-1.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "first-instruction "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return time.Unix(0, n)
		}
	}
	t.Fatalf("%s: no first-instruction line in its log", job)
	return time.Time{}
}

func report(t *testing.T, label string, ts []timing) {
	pick := func(f func(timing) time.Duration) string {
		ds := make([]time.Duration, len(ts))
		for i, x := range ts {
			ds[i] = f(x)
		}
		slices.Sort(ds)
		q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1)+0.5)] }
		return fmt.Sprintf("p50 %6.1f ms  max %6.1f ms", ms(q(0.5)), ms(ds[len(ds)-1]))
	}
	t.Logf("RESULT %s (%d jobs), from the CreateTrainingJob call:", label, len(ts))
	t.Logf("RESULT   InProgress (API answer)    %s", pick(func(x timing) time.Duration { return x.api }))
	t.Logf("RESULT   containers running         %s", pick(func(x timing) time.Duration { return x.training }))
	t.Logf("RESULT   first instruction          %s", pick(func(x timing) time.Duration { return x.first }))
	t.Logf("RESULT   Completed (model uploaded) %s", pick(func(x timing) time.Duration { return x.completed }))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
