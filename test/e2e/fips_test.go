package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// Under GODEBUG=fips140=only, where Go's crypto makes any non-approved
// algorithm an error, convoy up --fips serves the whole API with both CLIs:
// STS, IAM, KMS, S3 with and without SSE-KMS (the MD5 ETag and Content-MD5
// go through internal/fipsexempt), a training job from staging to the
// SSE-KMS model upload, and that model deployed to an endpoint and invoked
// through the runtime router. testssl sees only approved suites and groups.
func TestFIPSOnlyEndToEnd(t *testing.T) {
	c := harness.Start(t, harness.Options{Args: []string{"--fips", "--training-stop-grace", "5s"}, Env: []string{"GODEBUG=fips140=only"}})
	if c.Env["CONVOY_FIPS_ENDPOINT"] != c.Env["CONVOY_ENDPOINT"] || c.Env["CONVOY_TLS_PROFILE"] != "fips" {
		t.Fatalf("convoy.env under --fips: %v", c.Env)
	}
	if out, err := exec.Command(harness.Binary(t), "images", "import", "--data", c.DataDir, trainerImage(t), "trainer:1").CombinedOutput(); err != nil {
		t.Fatalf("images import: %v\n%s", err, out)
	}
	dir := t.TempDir()
	big := filepath.Join(dir, "big.bin") // above both CLIs' 8 MiB multipart threshold
	data := make([]byte, 12<<20)
	rand.Read(data)
	if err := os.WriteFile(big, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for version, tool := range map[string]string{"v1": "aws", "v2": "/usr/bin/aws"} {
		cli := harness.Tool(t, tool)
		t.Run("aws CLI "+version, func(t *testing.T) {
			bucket := "fips-" + version
			if id := awsJSON(t, c, cli, []string{"sts", "get-caller-identity"}); !strings.HasSuffix(str(id, "Arn"), ":user/admin") {
				t.Fatalf("get-caller-identity: %v", id)
			}
			key := str(awsJSON(t, c, cli, []string{"kms", "create-key"}), "KeyMetadata", "Arn")
			// fileb:// means raw bytes to both CLIs (a plain string is base64
			// to v2 and raw to v1).
			plain := writeFile(t, filepath.Join(dir, version+"-plain.txt"), []byte("hello"))
			ct := str(awsJSON(t, c, cli, []string{"kms", "encrypt", "--key-id", key, "--plaintext", "fileb://" + plain, "--encryption-context", "purpose=fips"}), "CiphertextBlob")
			raw, err := base64.StdEncoding.DecodeString(ct)
			if err != nil {
				t.Fatal(err)
			}
			blob := writeFile(t, filepath.Join(dir, version+"-blob"), raw)
			if pt := str(awsJSON(t, c, cli, []string{"kms", "decrypt", "--ciphertext-blob", "fileb://" + blob, "--encryption-context", "purpose=fips"}), "Plaintext"); pt != "aGVsbG8=" {
				t.Fatalf("kms decrypt: %q", pt)
			}
			for _, args := range [][]string{
				{"s3", "mb", "s3://" + bucket},
				{"s3", "cp", big, "s3://" + bucket + "/plain.bin"},
				{"s3", "cp", big, "s3://" + bucket + "/kms.bin", "--sse", "aws:kms", "--sse-kms-key-id", key},
				{"s3", "cp", "s3://" + bucket + "/plain.bin", filepath.Join(dir, bucket+"-plain")},
				{"s3", "cp", "s3://" + bucket + "/kms.bin", filepath.Join(dir, bucket+"-kms")},
				{"s3api", "put-object", "--bucket", bucket, "--key", "small", "--body", big, "--content-md5", contentMD5(t, big)},
			} {
				if r := c.AWS(t, cli, args); r.Err != nil {
					t.Fatalf("%v: %v\n%s", args, r.Err, r.Stderr)
				}
			}
			// A wrong Content-MD5 is still caught.
			awsFails(t, c, cli, "BadDigest", []string{"s3api", "put-object", "--bucket", bucket, "--key", "k", "--body", big,
				"--content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="})
			for _, args := range [][]string{
				{"s3", "rm", "--recursive", "s3://" + bucket}, // DeleteObjects: Content-MD5 required
				{"s3", "rb", "s3://" + bucket},
			} {
				if r := c.AWS(t, cli, args); r.Err != nil {
					t.Fatalf("%v: %v\n%s", args, r.Err, r.Stderr)
				}
			}
			for _, f := range []string{bucket + "-plain", bucket + "-kms"} {
				got, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("%s: round trip differs (%v)", f, err)
				}
			}
		})
	}

	t.Run("training job", func(t *testing.T) {
		cli := harness.Tool(t, "aws")
		for _, args := range [][]string{{"s3", "mb", "s3://input"}, {"s3", "mb", "s3://output"}, {"s3", "cp", big, "s3://input/train/data.bin"}} {
			if r := c.AWS(t, cli, args); r.Err != nil {
				t.Fatal(args, r.Err, r.Stderr)
			}
		}
		key := str(awsJSON(t, c, cli, []string{"kms", "create-key"}), "KeyMetadata", "Arn")
		trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
		role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
		awsJSON(t, c, cli, []string{"iam", "put-role-policy", "--role-name", "trainer", "--policy-name", "data", "--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
			{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket","s3:PutObject"],"Resource":"*"},
			{"Effect":"Allow","Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":%q}]}`, key)})
		job := trainingJob("fips-train", role, key, 1, 300, map[string]string{"mode": "train"})
		job["ResourceConfig"].(map[string]any)["VolumeKmsKeyId"] = key
		file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
		awsJSON(t, c, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file})
		deadline := time.Now().Add(2 * time.Minute)
		for {
			d := awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", "fips-train"})
			if s := str(d, "TrainingJobStatus"); s != "InProgress" {
				if s != "Completed" {
					t.Fatalf("fips-train: %v", d)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("fips-train did not end within 2 minutes")
			}
			time.Sleep(500 * time.Millisecond)
		}
		head := awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", "output", "--key", "models/fips-train/output/model.tar.gz"})
		if str(head, "ServerSideEncryption") != "aws:kms" {
			t.Fatalf("model.tar.gz: %v", head)
		}

		// Deploy the trained model and invoke it through the router.
		model := writeFile(t, filepath.Join(t.TempDir(), "model.json"), mustJSON(map[string]any{
			"ModelName": "fips-model", "ExecutionRoleArn": role,
			"PrimaryContainer": map[string]any{"Image": "trainer:1", "ModelDataUrl": "s3://output/models/fips-train/output/model.tar.gz"}}))
		awsJSON(t, c, cli, []string{"sagemaker", "create-model", "--cli-input-json", "file://" + model})
		config := writeFile(t, filepath.Join(t.TempDir(), "config.json"), mustJSON(map[string]any{
			"EndpointConfigName": "fips-config", "KmsKeyId": key,
			"ProductionVariants": []any{map[string]any{"VariantName": "primary", "ModelName": "fips-model",
				"InitialInstanceCount": 1, "InstanceType": "ml.m5.large", "InitialVariantWeight": 1}}}))
		awsJSON(t, c, cli, []string{"sagemaker", "create-endpoint-config", "--cli-input-json", "file://" + config})
		awsJSON(t, c, cli, []string{"sagemaker", "create-endpoint", "--endpoint-name", "fips-endpoint", "--endpoint-config-name", "fips-config"})
		deadline = time.Now().Add(2 * time.Minute)
		for {
			d := awsJSON(t, c, cli, []string{"sagemaker", "describe-endpoint", "--endpoint-name", "fips-endpoint"})
			if s := str(d, "EndpointStatus"); s != "Creating" {
				if s != "InService" {
					t.Fatalf("fips-endpoint: %v", d)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("fips-endpoint not InService within 2 minutes")
			}
			time.Sleep(500 * time.Millisecond)
		}
		in := writeFile(t, filepath.Join(t.TempDir(), "in.csv"), []byte("1,2\n3,4\n"))
		outFile := filepath.Join(t.TempDir(), "out.json")
		for _, tool := range []string{"aws", "/usr/bin/aws"} {
			out := awsJSON(t, c, harness.Tool(t, tool), []string{"sagemaker-runtime", "invoke-endpoint", "--endpoint-name", "fips-endpoint",
				"--body", "fileb://" + in, "--content-type", "text/csv", outFile})
			b, _ := os.ReadFile(outFile)
			if str(out, "InvokedProductionVariant") != "primary" || !strings.Contains(string(b), `"rows":2`) {
				t.Fatalf("%s invoke-endpoint: %v %s", tool, out, b)
			}
		}
		awsJSON(t, c, cli, []string{"sagemaker", "delete-endpoint", "--endpoint-name", "fips-endpoint"})
	})

	t.Run("testssl", func(t *testing.T) {
		byID := testsslFindings(t, harness.Tool(t, "testssl"), c, c.Addr)
		for id, f := range byID {
			if strings.HasPrefix(id, "cipher") && strings.Contains(strings.ToUpper(f), "CHACHA") {
				t.Errorf("testssl %s: %s: ChaCha20 is not FIPS-approved", id, f)
			}
		}
		if s := byID["PFS_ciphers"]; s == "" || strings.Contains(strings.ToUpper(s), "CHACHA") {
			t.Errorf("forward-secret suites %q: want AES-GCM only", s)
		}
		curves := byID["PFS_ECDHE_curves"]
		if curves == "" {
			t.Fatalf("testssl reported no ECDHE groups")
		}
		for _, g := range strings.Fields(curves) {
			switch g {
			case "prime256v1", "secp384r1", "secp521r1", "SecP256r1MLKEM768", "SecP384r1MLKEM1024":
			default:
				t.Errorf("group %s offered on the FIPS endpoint (all: %s)", g, curves)
			}
		}
	})

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"FIPS 140-only mode", "panic"} {
		if strings.Contains(c.Logs(), bad) {
			t.Errorf("convoy's log mentions %q: a non-approved algorithm was used", bad)
		}
	}
}

// contentMD5 is the Content-MD5 header value of a file (the test's own
// process is not under fips140=only).
func contentMD5(t *testing.T, path string) string {
	out, err := exec.Command("sh", "-c", "openssl md5 -binary "+path+" | base64").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// --fips-listen keeps the main endpoint on its profile and adds a FIPS one;
// it needs the FIPS module.
func TestFIPSListen(t *testing.T) {
	refused := harness.Launch(t, harness.Options{Args: []string{"--fips-listen", "127.0.0.1:0"}, Env: []string{"GODEBUG=fips140=off"}})
	if err := refused.Wait(30 * time.Second); err == nil || !strings.Contains(refused.Logs(), "GODEBUG=fips140=on") {
		t.Fatalf("--fips-listen without the module: %v\n%s", err, refused.Logs())
	}
	c := harness.Start(t, harness.Options{Args: []string{"--fips-listen", "127.0.0.1:0"}, Env: []string{"GODEBUG=fips140=on"}})
	fips := strings.TrimPrefix(c.Env["CONVOY_FIPS_ENDPOINT"], "https://")
	if fips == "" || fips == c.Addr || c.Env["CONVOY_TLS_PROFILE"] != "modern" {
		t.Fatalf("convoy.env: %v", c.Env)
	}
	// The main endpoint stays TLS 1.3 only; the FIPS endpoint takes TLS 1.2
	// with AES-GCM on P-256, and refuses ChaCha20 even in TLS 1.2.
	tls12 := func(addr string, suite uint16) error {
		cfg := tlsconf.Probe("127.0.0.1", tls.VersionTLS12, tls.VersionTLS12, []uint16{suite}, []tls.CurveID{tls.CurveP256})
		cfg.RootCAs = c.CAPool(t)
		conn, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := tls12(c.Addr, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err == nil {
		t.Error("the modern endpoint accepted TLS 1.2")
	}
	if err := tls12(fips, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); err != nil {
		t.Errorf("the FIPS endpoint refused TLS 1.2 AES-GCM P-256: %v", err)
	}
	if err := tls12(fips, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256); err == nil {
		t.Error("the FIPS endpoint accepted ChaCha20")
	}
	cli := harness.Tool(t, "/usr/bin/aws")
	r := c.AWS(t, cli, []string{"--endpoint-url", "https://" + fips, "sts", "get-caller-identity"})
	if r.Err != nil || !strings.Contains(r.Stdout, ":user/admin") {
		t.Fatalf("aws sts get-caller-identity on the FIPS endpoint: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
}
