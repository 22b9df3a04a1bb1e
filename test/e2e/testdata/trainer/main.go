// Command trainer is the training container of the e2e tests: it follows
// the SageMaker training contract (run with the argument "train", reads
// /opt/ml/input, writes /opt/ml/model) and does what its "mode"
// hyperparameter says:
//
//	train     digest the train channel, probe S3 with the job's credentials
//	          (probe_allowed and probe_denied are s3://bucket/key), write
//	          model.txt and output/data/metrics.txt
//	fail      write /opt/ml/output/failure "bad data" and exit 1
//	sleep     wait for SIGTERM, write model/terminated, exit 0
//	pair      algo-1 serves one connection, algo-2 dials algo-1 by name
//	reach     try to list a bucket through AWS_ENDPOINT_URL (5 s)
//	canary    the hosts exchange a known string over TCP and UDP (canary.go)
//
// Run with the argument "serve" it is an inference container (serve.go).
//
// Run with the arguments "process [fail]" it is a processing container
// instead: it digests /opt/ml/processing/input/data into
// /opt/ml/processing/output/result.txt, or, with "fail", writes
// /opt/ml/output/message "bad input" and exits 1.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
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
	case "canary":
		canary(rc.CurrentHost, hps)
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

// get reads s3://bucket/key with the credentials, endpoint and CA bundle
// the job's environment names, as an AWS SDK in the container would.
func get(uri string, timeout time.Duration) string {
	bucket, key, _ := strings.Cut(strings.TrimPrefix(uri, "s3://"), "/")
	pool := x509.NewCertPool()
	if ca := os.Getenv("AWS_CA_BUNDLE"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return "no CA: " + err.Error()
		}
		pool.AppendCertsFromPEM(pem)
	}
	client := s3.New(s3.Options{
		Region:       os.Getenv("AWS_REGION"),
		BaseEndpoint: aws.String(os.Getenv("AWS_ENDPOINT_URL")),
		Credentials: credentials.NewStaticCredentialsProvider(os.Getenv("AWS_ACCESS_KEY_ID"),
			os.Getenv("AWS_SECRET_ACCESS_KEY"), os.Getenv("AWS_SESSION_TOKEN")),
		HTTPClient:       &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
		UsePathStyle:     true,
		RetryMaxAttempts: 1,
	})
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
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
	if err := os.WriteFile("/opt/ml/processing/output/result.txt", []byte(out.String()), 0o644); err != nil {
		os.WriteFile("/opt/ml/output/message", []byte(err.Error()), 0o644)
		os.Exit(2)
	}
	os.MkdirAll("/opt/ml/processing/output/sub", 0o755)
	os.WriteFile("/opt/ml/processing/output/sub/n.txt", []byte("2\n"), 0o644)
	os.WriteFile("/opt/ml/output/message", []byte("processed"), 0o644)
}
