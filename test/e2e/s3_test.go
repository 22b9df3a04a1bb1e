package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"convoy/test/e2e/harness"
)

func writeRandomFile(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		t.Fatal(err)
	}
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	if out, err := exec.Command("cmp", a, b).CombinedOutput(); err != nil {
		t.Fatalf("cmp %s %s: %v %s", a, b, err, out)
	}
}

// The aws CLIs use convoy as S3: a multipart SSE-KMS upload and download
// byte-identical, head-object reports the encryption, ls, sync, rm and a
// ranged get work.
func TestS3WithAWSCLIs(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	dir := t.TempDir()
	for name, cli := range harness.AWSCLIs(t) {
		t.Run(name, func(t *testing.T) {
			size := int64(24 << 20)
			if strings.HasPrefix(name, "aws-cli/2") {
				size = 200 << 20 // the figure, once
			}
			bucket := "data-" + strings.NewReplacer("/", "", ".", "").Replace(strings.ToLower(name))
			key := str(awsJSON(t, c, cli, []string{"kms", "create-key", "--description", "s3 test"}), "KeyMetadata", "Arn")
			if key == "" {
				t.Fatal("kms create-key returned no ARN")
			}
			if r := c.AWS(t, cli, []string{"s3", "mb", "s3://" + bucket}); r.Err != nil {
				t.Fatalf("s3 mb: %v\n%s", r.Err, r.Stderr)
			}
			src := filepath.Join(dir, bucket+".bin")
			writeRandomFile(t, src, size)
			if r := c.AWS(t, cli, []string{"s3", "cp", src, "s3://" + bucket + "/models/big.bin", "--sse", "aws:kms", "--sse-kms-key-id", key, "--only-show-errors"}); r.Err != nil {
				t.Fatalf("s3 cp up: %v\n%s", r.Err, r.Stderr)
			}
			back := filepath.Join(dir, bucket+".back")
			if r := c.AWS(t, cli, []string{"s3", "cp", "s3://" + bucket + "/models/big.bin", back, "--only-show-errors"}); r.Err != nil {
				t.Fatalf("s3 cp down: %v\n%s", r.Err, r.Stderr)
			}
			sameFile(t, src, back)
			// Streaming, not buffering: the server's memory stays far below
			// the object's size.
			if peak := c.PeakRSS(t); size >= 200<<20 && peak > 160<<20 {
				t.Errorf("convoy peaked at %d MiB of memory for a %d MiB object", peak>>20, size>>20)
			}

			head := awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", bucket, "--key", "models/big.bin"})
			if str(head, "ServerSideEncryption") != "aws:kms" || str(head, "SSEKMSKeyId") != key {
				t.Fatalf("head-object: %v", head)
			}
			if n, _ := head["ContentLength"].(float64); int64(n) != size {
				t.Fatalf("head-object ContentLength %v, want %d", head["ContentLength"], size)
			}

			// sync a small tree up and back.
			tree := filepath.Join(dir, bucket+"-tree")
			for i, p := range []string{"a.txt", "sub/b.txt", "sub/deeper/c with space.txt", "unicodé/ü.txt"} {
				os.MkdirAll(filepath.Dir(filepath.Join(tree, p)), 0o755)
				os.WriteFile(filepath.Join(tree, p), bytes.Repeat([]byte{byte('a' + i)}, 1000*(i+1)), 0o644)
			}
			if r := c.AWS(t, cli, []string{"s3", "sync", tree, "s3://" + bucket + "/tree/", "--only-show-errors"}); r.Err != nil {
				t.Fatalf("s3 sync up: %v\n%s", r.Err, r.Stderr)
			}
			ls := c.AWS(t, cli, []string{"s3", "ls", "s3://" + bucket + "/tree/", "--recursive"})
			for _, want := range []string{"tree/a.txt", "tree/sub/deeper/c with space.txt", "tree/unicodé/ü.txt"} {
				if !strings.Contains(ls.Stdout, want) {
					t.Fatalf("s3 ls lacks %q:\n%s%s", want, ls.Stdout, ls.Stderr)
				}
			}
			top := c.AWS(t, cli, []string{"s3", "ls", "s3://" + bucket + "/"})
			if !strings.Contains(top.Stdout, "PRE models/") || !strings.Contains(top.Stdout, "PRE tree/") {
				t.Fatalf("s3 ls top level:\n%s", top.Stdout)
			}
			tree2 := filepath.Join(dir, bucket+"-tree2")
			if r := c.AWS(t, cli, []string{"s3", "sync", "s3://" + bucket + "/tree/", tree2, "--only-show-errors"}); r.Err != nil {
				t.Fatalf("s3 sync down: %v\n%s", r.Err, r.Stderr)
			}
			sameFile(t, filepath.Join(tree, "sub/deeper/c with space.txt"), filepath.Join(tree2, "sub/deeper/c with space.txt"))
			sameFile(t, filepath.Join(tree, "unicodé/ü.txt"), filepath.Join(tree2, "unicodé/ü.txt"))

			// Ranged get.
			part := filepath.Join(dir, bucket+".range")
			awsJSON(t, c, cli, []string{"s3api", "get-object", "--bucket", bucket, "--key", "models/big.bin", "--range", "bytes=1048570-1048679", part})
			got, _ := os.ReadFile(part)
			f, _ := os.Open(src)
			want := make([]byte, 110)
			f.ReadAt(want, 1048570)
			f.Close()
			if !bytes.Equal(got, want) {
				t.Fatalf("ranged get: %d bytes, differ from the source", len(got))
			}

			if r := c.AWS(t, cli, []string{"s3", "rm", "s3://" + bucket + "/tree/", "--recursive", "--only-show-errors"}); r.Err != nil {
				t.Fatalf("s3 rm: %v\n%s", r.Err, r.Stderr)
			}
			if ls := c.AWS(t, cli, []string{"s3", "ls", "s3://" + bucket + "/tree/", "--recursive"}); strings.TrimSpace(ls.Stdout) != "" {
				t.Fatalf("objects left after rm:\n%s", ls.Stdout)
			}
			awsFails(t, c, cli, "NoSuchKey", []string{"s3api", "get-object", "--bucket", bucket, "--key", "tree/a.txt", filepath.Join(dir, "nothing")})
			awsFails(t, c, cli, "BucketNotEmpty", []string{"s3api", "delete-bucket", "--bucket", bucket})
		})
	}
}

// A canary written into 1,000 objects is nowhere on disk in plaintext.
func TestCanaryNeverOnDiskInPlaintext(t *testing.T) {
	py := harness.Tool(t, "python3")
	c := harness.Start(t, harness.Options{})
	canary := fmt.Sprintf("CONVOY-CANARY-%x", sha256.Sum256([]byte(t.Name())))[:40]
	script := fmt.Sprintf(`
import os, boto3, concurrent.futures as cf
s3 = boto3.client("s3", endpoint_url=os.environ["CONVOY_ENDPOINT"])
s3.create_bucket(Bucket="canary")
def put(i):
    body = (%q + " object %%d " %% i) * (1 + i %% 50)
    s3.put_object(Bucket="canary", Key="c/%%04d.txt" %% i, Body=body.encode(), Metadata={"note": %q})
with cf.ThreadPoolExecutor(16) as ex:
    list(ex.map(put, range(1000)))
n = sum(len(p.get("Contents", [])) for p in s3.get_paginator("list_objects_v2").paginate(Bucket="canary"))
print(n, s3.get_object(Bucket="canary", Key="c/0999.txt")["Body"].read().decode()[:40])
`, canary, canary)
	cmd := exec.Command(py, "-c", script)
	cmd.Env = c.ClientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "1000 "+canary) {
		t.Fatalf("boto3 upload: %v\n%s", err, out)
	}
	// Also ask SQLite to checkpoint nothing away: grep the WAL as it is.
	hits, _ := exec.Command("grep", "-r", "-l", "-a", canary, c.DataDir).CombinedOutput()
	if len(bytes.TrimSpace(hits)) > 0 {
		t.Fatalf("canary found in plaintext under the data dir:\n%s", hits)
	}
	// The grep itself works: the canary is found where it is plaintext.
	probe := filepath.Join(t.TempDir(), "probe")
	os.WriteFile(probe, []byte("x"+canary+"x"), 0o600)
	if err := exec.Command("grep", "-q", "-a", canary, probe).Run(); err != nil {
		t.Fatal("grep does not find the canary where it is")
	}
}

// Reading an SSE-KMS object needs kms:Decrypt on its key, as on AWS: a user
// with every S3 permission but no KMS permission is refused; the key's owner
// is not; granting kms:Decrypt on that key lets the user in.
func TestS3GetNeedsKMSDecrypt(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	cli := harness.Tool(t, "aws")
	dir := t.TempDir()
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key"}), "KeyMetadata", "Arn")
	if r := c.AWS(t, cli, []string{"s3", "mb", "s3://secret"}); r.Err != nil {
		t.Fatal(r.Stderr)
	}
	src := filepath.Join(dir, "record.csv")
	os.WriteFile(src, []byte("patient,value\n1,42\n"), 0o600)
	if r := c.AWS(t, cli, []string{"s3", "cp", src, "s3://secret/record.csv", "--sse", "aws:kms", "--sse-kms-key-id", key}); r.Err != nil {
		t.Fatal(r.Stderr)
	}
	awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", "analyst"})
	k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", "analyst"})
	analyst := creds(str(k, "AccessKey", "AccessKeyId"), str(k, "AccessKey", "SecretAccessKey"), "")
	awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", "analyst", "--policy-name", "s3",
		"--policy-document", `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`})

	out := filepath.Join(dir, "out.csv")
	awsFails(t, c, cli, "AccessDenied", []string{"s3api", "get-object", "--bucket", "secret", "--key", "record.csv", out}, analyst...)
	if _, err := os.Stat(out); err == nil {
		if b, _ := os.ReadFile(out); len(b) > 0 {
			t.Fatalf("denied GET wrote %q", b)
		}
	}
	// HEAD needs no key: metadata is not encrypted under the KMS key.
	awsJSON(t, c, cli, []string{"s3api", "head-object", "--bucket", "secret", "--key", "record.csv"}, analyst...)
	awsJSON(t, c, cli, []string{"s3api", "get-object", "--bucket", "secret", "--key", "record.csv", out})
	sameFile(t, src, out)

	awsJSON(t, c, cli, []string{"iam", "put-user-policy", "--user-name", "analyst", "--policy-name", "kms",
		"--policy-document", fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:Decrypt","Resource":%q}]}`, key)})
	out2 := filepath.Join(dir, "out2.csv")
	awsJSON(t, c, cli, []string{"s3api", "get-object", "--bucket", "secret", "--key", "record.csv", out2}, analyst...)
	sameFile(t, src, out2)
}

// A presigned S3 GET made by boto3 (SigV4) works with curl until it
// expires, and fails once one character changes.
func TestS3PresignedGetWithCurl(t *testing.T) {
	curl := harness.Tool(t, "curl")
	py := harness.Tool(t, "python3")
	c := harness.Start(t, harness.Options{})
	script := `
import os, boto3, botocore.config
s3 = boto3.client("s3", endpoint_url=os.environ["CONVOY_ENDPOINT"],
                  config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="shared")
s3.put_object(Bucket="shared", Key="model card.txt", Body=b"weights are fine\n", ServerSideEncryption="aws:kms")
print(s3.generate_presigned_url("get_object", Params={"Bucket": "shared", "Key": "model card.txt"}, ExpiresIn=3))
`
	cmd := exec.Command(py, "-c", script)
	cmd.Env = c.ClientEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("boto3: %v\n%s", err, out)
	}
	url := strings.TrimSpace(string(out))
	fetch := func(u string) (string, string) {
		o, _ := exec.Command(curl, "-sS", "--cacert", c.CABundle, "-w", "\n%{http_code}", u).CombinedOutput()
		s := strings.TrimSpace(string(o))
		i := strings.LastIndex(s, "\n")
		return s[i+1:], strings.TrimSpace(s[:max(i, 0)])
	}
	if code, body := fetch(url); code != "200" || body != "weights are fine" {
		t.Fatalf("presigned GET: %s %q", code, body)
	}
	tampered := strings.Replace(url, "model%20card", "model%20cart", 1)
	if code, body := fetch(tampered); code != "403" || !strings.Contains(body, "SignatureDoesNotMatch") {
		t.Fatalf("tampered presigned GET: %s %s", code, body)
	}
	time.Sleep(4 * time.Second)
	if code, body := fetch(url); code != "403" || !strings.Contains(body, "AccessDenied") {
		t.Fatalf("expired presigned GET: %s %s", code, body)
	}
}

// A bucket policy grants and denies alongside IAM: it lets a user with no
// identity policy read, and its explicit Deny (conditioned on
// aws:SecureTransport, always true on convoy) overrides that user's own
// AdministratorAccess.
func TestS3BucketPolicy(t *testing.T) {
	c := harness.Start(t, harness.Options{})
	cli := harness.Tool(t, "aws")
	dir := t.TempDir()
	src := filepath.Join(dir, "f.txt")
	os.WriteFile(src, []byte("shared data\n"), 0o600)
	if r := c.AWS(t, cli, []string{"s3", "mb", "s3://shared"}); r.Err != nil {
		t.Fatal(r.Stderr)
	}
	if r := c.AWS(t, cli, []string{"s3", "cp", src, "s3://shared/f.txt"}); r.Err != nil {
		t.Fatal(r.Stderr)
	}
	mkUser := func(name string) []string {
		awsJSON(t, c, cli, []string{"iam", "create-user", "--user-name", name})
		k := awsJSON(t, c, cli, []string{"iam", "create-access-key", "--user-name", name})
		return creds(str(k, "AccessKey", "AccessKeyId"), str(k, "AccessKey", "SecretAccessKey"), "")
	}
	reader, boss := mkUser("reader"), mkUser("boss")
	awsJSON(t, c, cli, []string{"iam", "attach-user-policy", "--user-name", "boss", "--policy-arn", "arn:aws:iam::aws:policy/AdministratorAccess"})
	account := str(awsJSON(t, c, cli, []string{"sts", "get-caller-identity"}), "Account")
	out := filepath.Join(dir, "out.txt")
	awsFails(t, c, cli, "AccessDenied", []string{"s3api", "get-object", "--bucket", "shared", "--key", "f.txt", out}, reader...)

	pol := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[
 {"Sid":"ReaderMayRead","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::%[1]s:user/reader"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*"},
 {"Sid":"NotOverPlaintext","Effect":"Deny","Principal":"*","Action":"s3:*","Resource":["arn:aws:s3:::shared","arn:aws:s3:::shared/*"],"Condition":{"Bool":{"aws:SecureTransport":"false"}}},
 {"Sid":"NoBoss","Effect":"Deny","Principal":{"AWS":"arn:aws:iam::%[1]s:user/boss"},"Action":"s3:GetObject","Resource":"arn:aws:s3:::shared/*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}]}`, account)
	awsJSON(t, c, cli, []string{"s3api", "put-bucket-policy", "--bucket", "shared", "--policy", pol})
	awsJSON(t, c, cli, []string{"s3api", "get-object", "--bucket", "shared", "--key", "f.txt", out}, reader...)
	sameFile(t, src, out)
	awsFails(t, c, cli, "AccessDenied", []string{"s3api", "put-object", "--bucket", "shared", "--key", "g.txt", "--body", src}, reader...)
	awsFails(t, c, cli, "AccessDenied", []string{"s3api", "get-object", "--bucket", "shared", "--key", "f.txt", out}, boss...)
	awsFails(t, c, cli, "MalformedPolicy", []string{"s3api", "put-bucket-policy", "--bucket", "shared", "--policy",
		`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}`})
}
