// Command trainer is the training container of the e2e tests: it follows
// the SageMaker training contract (run with the argument "train", reads
// /opt/ml/input, writes /opt/ml/model) and does what its "mode"
// hyperparameter says:
//
//	train     digest the train channel, probe S3 with the job's credentials
//	          as the SDK's default chain finds them (probe_allowed and
//	          probe_denied are s3://bucket/key), note which credential
//	          variables the environment holds, write model.txt and
//	          output/data/metrics.txt
//	fail      write /opt/ml/output/failure "bad data" and exit 1
//	sleep     wait for SIGTERM, write model/terminated, exit 0
//	pair      algo-1 serves one connection, algo-2 dials algo-1 by name
//	reach     try to read probe_allowed through AWS_ENDPOINT_URL (5 s), to
//	          connect to that endpoint and to the credentials endpoint, and
//	          note which credential variables the environment holds
//	canary    the hosts exchange a known string over TCP and UDP (canary.go)
//	pipe_check  read every Pipe channel's epochs 0 and 1 and digest every
//	          File channel into model.txt (pipe.go)
//
// Run with the argument "serve" it is an inference container (serve.go).
//
// Run with the arguments "process [fail]" it is a processing container
// instead: it digests /opt/ml/processing/input/data into
// /opt/ml/processing/output/result.txt (reading the S3 object PROBE names,
// if set, with the SDK's default chain), or, with "fail", writes
// /opt/ml/output/message "bad input" and exits 1.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

var model strings.Builder

func main() {
	if len(os.Args) >= 2 && os.Args[1] == "process" {
		process(os.Args[2:])
		return
	}
	if len(os.Args) == 2 && os.Args[1] == "serve" {
		serve()
		return
	}
	if len(os.Args) != 2 || os.Args[1] != "train" {
		fail(fmt.Sprintf("want the single argument train, got %q", os.Args[1:]))
	}
	var hps map[string]string
	readJSON("/opt/ml/input/config/hyperparameters.json", &hps)
	var rc struct {
		CurrentHost string   `json:"current_host"`
		Hosts       []string `json:"hosts"`
	}
	readJSON("/opt/ml/input/config/resourceconfig.json", &rc)
	var dc map[string]map[string]string
	readJSON("/opt/ml/input/config/inputdataconfig.json", &dc)
	hb, _ := json.Marshal(hps)
	fmt.Fprintf(&model, "host=%s hosts=%s\nhps=%s\n", rc.CurrentHost, strings.Join(rc.Hosts, ","), hb)
	fmt.Printf("trainer on %s, mode %s\n", rc.CurrentHost, hps["mode"])

	switch hps["mode"] {
	case "train":
		fmt.Fprintf(&model, "train-mode=%s content=%s\n", dc["train"]["TrainingInputMode"], dc["train"]["ContentType"])
		fmt.Fprintf(&model, "digest=%s\n", digest("/opt/ml/input/data/train"))
		fmt.Fprintf(&model, "env SM_CHANNEL_TRAIN=%s TRAINING_JOB_NAME=%s SM_CURRENT_HOST=%s\n", os.Getenv("SM_CHANNEL_TRAIN"), os.Getenv("TRAINING_JOB_NAME"), os.Getenv("SM_CURRENT_HOST"))
		fmt.Fprintf(&model, "allowed=%s\n", get(hps["probe_allowed"], 30*time.Second))
		fmt.Fprintf(&model, "denied=%s\n", get(hps["probe_denied"], 30*time.Second))
		fmt.Fprintf(&model, "credential variables:%s\n", credentialVars())
		os.WriteFile("/opt/ml/output/data/metrics.txt", []byte("loss=0.1\n"), 0o644)
	case "fail":
		os.WriteFile("/opt/ml/output/failure", []byte("bad data"), 0o644)
		os.Exit(1)
	case "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		select {
		case <-sig:
			os.WriteFile("/opt/ml/model/terminated", []byte("got SIGTERM\n"), 0o644)
			os.Exit(0)
		case <-time.After(10 * time.Minute):
			os.Exit(9)
		}
	case "pair":
		if rc.CurrentHost == "algo-1" {
			ln, err := net.Listen("tcp", ":7777")
			if err != nil {
				fail(err.Error())
			}
			c, err := ln.Accept()
			if err != nil {
				fail(err.Error())
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "hello from %s\n", rc.CurrentHost)
			c.Close()
			fmt.Fprintf(&model, "peer said: %s", line)
		} else {
			var c net.Conn
			var err error
			for range 150 {
				if c, err = net.Dial("tcp", "algo-1:7777"); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				fail(err.Error())
			}
			fmt.Fprintf(c, "hello from %s\n", rc.CurrentHost)
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(&model, "peer said: %s", line)
		}
	case "reach":
		fmt.Fprintf(&model, "reach=%s\n", get(hps["probe_allowed"], 5*time.Second))
		fmt.Fprintf(&model, "dial api=%s credentials=%s\n", dial(os.Getenv("AWS_ENDPOINT_URL")), dial("http://169.254.170.2"))
		fmt.Fprintf(&model, "credential variables:%s\n", credentialVars())
	case "canary":
		canary(rc.CurrentHost, hps)
	case "pipe_check":
		pipeCheck(dc)
	default:
		fail("unknown mode " + hps["mode"])
	}
	if err := os.WriteFile("/opt/ml/model/model.txt", []byte(model.String()), 0o644); err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	os.WriteFile("/opt/ml/output/failure", []byte(msg), 0o644)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(2)
}

func readJSON(path string, v any) {
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		fail(err.Error())
	}
}

// digest hashes every file's path and content under dir, in order.
func digest(dir string) string {
	var files []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fail(err.Error())
		}
		rel, _ := filepath.Rel(dir, f)
		fmt.Fprintf(h, "%s\n%d\n", rel, len(b))
		h.Write(b)
	}
	return fmt.Sprintf("%d files %s", len(files), hex.EncodeToString(h.Sum(nil)))
}

// get reads s3://bucket/key as an AWS SDK in the container would, with
// nothing but the environment to go on: the SDK's default configuration
// finds the region, the endpoint (AWS_ENDPOINT_URL), the CA bundle
// (AWS_CA_BUNDLE) and the credentials (the container credentials endpoint
// that AWS_CONTAINER_CREDENTIALS_RELATIVE_URI names) by itself.
func get(uri string, timeout time.Duration) string {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(uri, "s3://"), "/")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRetryMaxAttempts(1))
	if err != nil {
		return "no config: " + err.Error()
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) { o.UsePathStyle = true })
	out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return "error " + ae.ErrorCode()
		}
		return "fail " + err.Error()
	}
	defer out.Body.Close()
	b := make([]byte, 64)
	n, _ := out.Body.Read(b)
	return "ok " + strings.TrimSpace(string(b[:n]))
}

// credentialVars lists the AWS credential variables set in the
// environment, by name only: their values are secrets or capabilities.
func credentialVars() string {
	var b strings.Builder
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"} {
		if _, ok := os.LookupEnv(k); ok {
			b.WriteString(" " + k)
		}
	}
	return b.String()
}

// dial says whether a TCP connection to the host of url opens within 2 s.
func dial(url string) string {
	u, err := neturl.Parse(url)
	if err != nil || u.Host == "" {
		return "bad-url"
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
	}
	c, err := net.DialTimeout("tcp", host, 2*time.Second)
	if err != nil {
		return "fail"
	}
	c.Close()
	return "ok"
}

// process is the processing mode.
func process(args []string) {
	var job struct{ ProcessingJobName, ProcessingJobArn string }
	readJSON("/opt/ml/config/processingjobconfig.json", &job)
	var rc struct {
		CurrentHost string   `json:"current_host"`
		Hosts       []string `json:"hosts"`
	}
	readJSON("/opt/ml/config/resourceconfig.json", &rc)
	if len(args) > 0 && args[0] == "fail" {
		os.WriteFile("/opt/ml/output/message", []byte("bad input"), 0o644)
		os.Exit(1)
	}
	var out strings.Builder
	fmt.Fprintf(&out, "job=%s host=%s hosts=%s\n", job.ProcessingJobName, rc.CurrentHost, strings.Join(rc.Hosts, ","))
	fmt.Fprintf(&out, "digest=%s\n", digest("/opt/ml/processing/input/data"))
	err := os.WriteFile("/opt/ml/processing/input/data/x", []byte("x"), 0o644)
	fmt.Fprintf(&out, "input-writable=%t\n", err == nil)
	fmt.Fprintf(&out, "env=%s\n", os.Getenv("JOB_ENV"))
	if probe := os.Getenv("PROBE"); probe != "" {
		fmt.Fprintf(&out, "probe=%s\n", get(probe, 30*time.Second))
	}
	fmt.Fprintf(&out, "credential variables:%s\n", credentialVars())
	if err := os.WriteFile("/opt/ml/processing/output/result.txt", []byte(out.String()), 0o644); err != nil {
		os.WriteFile("/opt/ml/output/message", []byte(err.Error()), 0o644)
		os.Exit(2)
	}
	os.MkdirAll("/opt/ml/processing/output/sub", 0o755)
	os.WriteFile("/opt/ml/processing/output/sub/n.txt", []byte("2\n"), 0o644)
	os.WriteFile("/opt/ml/output/message", []byte("processed"), 0o644)
}
