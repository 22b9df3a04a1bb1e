package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/test/e2e/harness"
)

// Inter-node encryption, proven on the wire: three 2-host jobs run while
// tshark captures every interface of convoy's network namespace (the jobs'
// bridges and veths among them). Their hosts exchange a known string, one
// per job, many times over TCP and over UDP:
//
//   - ice-on, with EnableInterContainerTrafficEncryption: its string never
//     appears in the capture (the raw bytes are searched, which is stricter
//     than following streams), the TCP exchange completes, the UDP one is
//     dropped and the job's log says so;
//   - ice-off, without: its string appears in the same capture, which
//     proves that the capture sees the jobs' traffic;
//   - ice-kill, with encryption, exchanging until something breaks: the
//     test kills algo-2's tunnel process mid-job; the training code sees the
//     connection fail, the job fails with a FailureReason that says why,
//     and its string never appears either.
func TestInternodeEncryptionEndToEnd(t *testing.T) {
	cli := harness.Tool(t, "aws")
	tshark := harness.Tool(t, "tshark")
	c := harness.Start(t, harness.Options{Args: []string{"--training-stop-grace", "5s"}})
	ctx := harness.Context(t)

	jobsReady(t, c, cli, "input", "output")
	for _, k := range []string{"train/a.csv", "raw/a.csv"} {
		if _, err := c.S3(t).PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("input"), Key: aws.String(k),
			Body: strings.NewReader("1,2,3\n")}); err != nil {
			t.Fatal(err)
		}
	}
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "models"}), "KeyMetadata", "Arn")
	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
	awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "trainer", "--policy-name", "data", "--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
		{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::input","arn:aws:s3:::input/*"]},
		{"Effect":"Allow","Action":"s3:PutObject","Resource":"arn:aws:s3:::output/*"},
		{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)})

	// The capture leaves out convoy's own API port (staging, uploads, the
	// containers' AWS calls): TLS anyway, and not what is under test.
	_, apiPort, _ := net.SplitHostPort(c.Addr)
	pcap := startTshark(t, tshark, "not tcp port "+apiPort)

	words := map[string]string{}
	for _, name := range []string{"ice-on", "ice-off", "ice-kill"} {
		words[name] = fmt.Sprintf("CONVOY-CANARY-%s-%d", strings.ToUpper(strings.TrimPrefix(name, "ice-")), time.Now().UnixNano())
	}
	job := func(name string, encrypt bool, rounds string) {
		j := trainingJob(name, role, key, 2, 300, map[string]string{"mode": "canary", "canary": words[name], "rounds": rounds})
		j["EnableInterContainerTrafficEncryption"] = encrypt
		file := writeFile(t, filepath.Join(t.TempDir(), name+".json"), mustJSON(j))
		awsJSON(t, c, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file})
	}
	job("ice-on", true, "300")
	job("ice-off", false, "300")
	job("ice-kill", true, "0")
	// A processing job of two instances, encrypted the same way.
	proc := processingJob("ice-proc", role, key)
	proc["ProcessingResources"].(map[string]any)["ClusterConfig"].(map[string]any)["InstanceCount"] = 2
	proc["NetworkConfig"] = map[string]any{"EnableInterContainerTrafficEncryption": true}
	awsJSON(t, c, cli, []string{"sagemaker", "create-processing-job", "--cli-input-json",
		"file://" + writeFile(t, filepath.Join(t.TempDir(), "proc.json"), mustJSON(proc))})

	describe := func(name string) map[string]any {
		return awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", name})
	}
	waitEnd := func(name string) map[string]any {
		t.Helper()
		deadline := time.Now().Add(3 * time.Minute)
		for {
			d := describe(name)
			if s := str(d, "TrainingJobStatus"); s != "InProgress" && s != "Stopping" {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s did not end within 3 minutes: %v", name, d)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	jobLog := func(name, host string) string {
		b, _ := os.ReadFile(filepath.Join(c.DataDir, "jobs", name, "logs", host+".log"))
		return string(b)
	}
	model := func(d map[string]any) string {
		t.Helper()
		local := filepath.Join(t.TempDir(), "model.tar.gz")
		if r := c.AWS(t, cli, []string{"s3", "cp", str(d, "ModelArtifacts", "S3ModelArtifacts"), local}); r.Err != nil {
			t.Fatalf("s3 cp: %v\n%s", r.Err, r.Stderr)
		}
		return untar(t, local)["model.txt"]
	}

	// Kill algo-2's tunnel once the hosts of ice-kill are exchanging.
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(jobLog("ice-kill", "algo-1"), "canary: algo-1 answered 1\n") {
		if time.Now().After(deadline) {
			t.Fatalf("ice-kill never started exchanging:\n%s\n%s", jobLog("ice-kill", "algo-1"), jobLog("ice-kill", "algo-2"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	agent := meshAgentPID(t, filepath.Join(c.DataDir, "executor", "jobs", "ice-kill", "algo-2"))
	if err := syscall.Kill(agent, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed algo-2's mesh agent of ice-kill, pid %d", agent)

	on, off, killed := waitEnd("ice-on"), waitEnd("ice-off"), waitEnd("ice-kill")
	captured := pcap()

	t.Run("encrypted", func(t *testing.T) {
		if str(on, "TrainingJobStatus") != "Completed" || on["EnableInterContainerTrafficEncryption"] != true {
			t.Fatalf("ice-on: %v", on)
		}
		if n := bytes.Count(captured, []byte(words["ice-on"])); n != 0 {
			t.Fatalf("the canary of the encrypted job appears %d times in the capture", n)
		}
		m := model(on)
		if !strings.Contains(m, "tcp exchanges 300\n") || !strings.Contains(m, "udp received 0\n") {
			t.Fatalf("model.txt of ice-on:\n%s", m)
		}
		for _, want := range []struct{ host, text string }{
			{"algo-1", "[convoy mesh] inter-node encryption is on for algo-1"},
			{"algo-1", "tunnel with algo-2"},
			{"algo-1", "convoy://job/ice-on/host/algo-2"},
			{"algo-2", "records sealed with AES-256-GCM"},
			{"algo-2", "inter-node encryption carries TCP only"},
			{"algo-2", "canary: algo-2 done: 300 TCP exchanges"},
		} {
			if !strings.Contains(jobLog("ice-on", want.host), want.text) {
				t.Errorf("%s's log of ice-on lacks %q:\n%s", want.host, want.text, jobLog("ice-on", want.host))
			}
		}
		if n := strings.Count(jobLog("ice-on", "algo-2"), "carries TCP only"); n != 1 {
			t.Errorf("the UDP drop is reported %d times, want once", n)
		}
		t.Logf("algo-2's log of ice-on:\n%s", jobLog("ice-on", "algo-2"))
		// The CloudWatch view of the same log.
		events := awsJSON(t, c, cli, []string{"logs", "get-log-events", "--log-group-name", "/aws/sagemaker/TrainingJobs",
			"--log-stream-name", "ice-on/algo-1-1", "--start-from-head"})
		if !strings.Contains(fmt.Sprint(events["events"]), "inter-node encryption is on") {
			t.Errorf("get-log-events lacks the mesh's opening line: %v", events)
		}
		// The capture did see the encrypted job's tunnels.
		out, err := exec.Command(tshark, "-r", capturePath(t, captured), "-Y", "tcp.port == 1021", "-T", "fields", "-e", "frame.number").Output()
		if err != nil || len(bytes.Fields(out)) == 0 {
			t.Fatalf("no tunnel traffic (TCP port 1021) in the capture: %v", err)
		}
		t.Logf("%d frames of tunnel traffic captured, canary absent", len(bytes.Fields(out)))
	})

	t.Run("plain", func(t *testing.T) {
		if str(off, "TrainingJobStatus") != "Completed" || off["EnableInterContainerTrafficEncryption"] != false {
			t.Fatalf("ice-off: %v", off)
		}
		n := bytes.Count(captured, []byte(words["ice-off"]))
		if n == 0 {
			t.Fatalf("the canary of the unencrypted job is not in the capture: the capture proves nothing")
		}
		m := model(off)
		if !strings.Contains(m, "tcp exchanges 300\n") || strings.Contains(m, "udp received 0\n") {
			t.Fatalf("model.txt of ice-off:\n%s", m)
		}
		if strings.Contains(jobLog("ice-off", "algo-1"), "[convoy mesh]") {
			t.Errorf("the unencrypted job's log mentions the mesh")
		}
		t.Logf("the unencrypted job's canary appears %d times in the capture", n)
	})

	t.Run("tunnel killed", func(t *testing.T) {
		reason := str(killed, "FailureReason")
		if str(killed, "TrainingJobStatus") != "Failed" ||
			!strings.Contains(reason, "inter-node encryption tunnel of algo-2 exited (signal: killed)") ||
			!strings.Contains(reason, "the job was stopped so that no traffic could flow unprotected") {
			t.Fatalf("ice-kill: %v", killed)
		}
		t.Logf("FailureReason: %s", reason)
		// Both ends see a reset, none a clean end of file: algo-2's own
		// agent died with the connection, algo-1's reset it when its tunnel
		// to algo-2 broke.
		logs := jobLog("ice-kill", "algo-1") + jobLog("ice-kill", "algo-2")
		for _, h := range []string{"algo-1", "algo-2"} {
			if !regexp.MustCompile(`canary: exchange failed on ` + h + ` after \d+: .*connection reset by peer`).MatchString(logs) {
				t.Errorf("the training code on %s did not see its connection reset:\n%s", h, logs)
			}
		}
		t.Logf("logs of ice-kill:\n%s", logs)
		if n := bytes.Count(captured, []byte(words["ice-kill"])); n != 0 {
			t.Fatalf("the canary of the killed job appears %d times in the capture", n)
		}
	})

	t.Run("processing", func(t *testing.T) {
		deadline := time.Now().Add(3 * time.Minute)
		var d map[string]any
		for {
			d = awsJSON(t, c, cli, []string{"sagemaker", "describe-processing-job", "--processing-job-name", "ice-proc"})
			if s := str(d, "ProcessingJobStatus"); s != "InProgress" && s != "Stopping" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ice-proc did not end: %v", d)
			}
			time.Sleep(500 * time.Millisecond)
		}
		if str(d, "ProcessingJobStatus") != "Completed" || d["NetworkConfig"].(map[string]any)["EnableInterContainerTrafficEncryption"] != true {
			t.Fatalf("ice-proc: %v", d)
		}
		for _, h := range []string{"algo-1", "algo-2"} {
			if log := jobLog("pj-ice-proc", h); !strings.Contains(log, "[convoy mesh] inter-node encryption is on for "+h) {
				t.Errorf("%s's log of ice-proc:\n%s", h, log)
			}
		}
	})

	// The installation can require encryption.
	t.Run("required", func(t *testing.T) {
		strict := harness.Start(t, harness.Options{Args: []string{"--require-internode-encryption"}})
		role := str(awsJSON(t, strict, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
		j := trainingJob("unencrypted", role, "", 2, 300, map[string]string{"mode": "canary", "canary": "x"})
		file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(j))
		r := strict.AWS(t, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file}, "AWS_MAX_ATTEMPTS=1")
		if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationException)") || !strings.Contains(r.Stderr, "--require-internode-encryption") {
			t.Fatalf("unencrypted 2-host job under --require-internode-encryption: %v\n%s", r.Err, r.Stderr)
		}
	})
}

// meshAgentPID finds the mesh agent whose configuration is under dir (an
// executor host directory).
func meshAgentPID(t *testing.T, dir string) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[1] == "mesh-agent" && strings.Contains(string(cmdline), dir+"/") {
			return pid
		}
	}
	t.Fatalf("no mesh agent running for %s", dir)
	return 0
}

// startTshark captures every interface of this network namespace with the
// capture filter; the returned function stops it and returns the capture.
func startTshark(t *testing.T, tshark, filter string) func() []byte {
	t.Helper()
	file := filepath.Join(t.TempDir(), "capture.pcapng")
	cmd := exec.Command(tshark, "-i", "any", "-f", filter, "-w", file)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tshark: %v", err)
	}
	ready := make(chan struct{})
	var lines []string
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if strings.Contains(sc.Text(), "Capturing on") {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("tshark did not start capturing: %s", strings.Join(lines, "\n"))
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(syscall.SIGINT)
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	return func() []byte {
		// What the kernel has handed to tshark is in the file once it exits.
		stop()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// capturePath writes a capture for tshark -r.
func capturePath(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "capture.pcapng")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
