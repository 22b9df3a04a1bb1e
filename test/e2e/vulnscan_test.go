package e2e

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"convoy/internal/images/imagetest"
	"convoy/test/e2e/harness"
)

// vulnDB writes OSV records that mark the Go standard library of every
// released Go version (so: the trainer image's) CRITICAL and smithy-go, a
// module the trainer is built with, HIGH; and two that affect nothing in it.
func vulnDB(t *testing.T) string {
	dir := t.TempDir()
	recs := map[string]map[string]any{
		"GO-2099-0001": {"id": "GO-2099-0001", "modified": "2099-01-01T00:00:00Z", "aliases": []string{"CVE-2099-0001"},
			"summary": "crafted for convoy's tests", "database_specific": map[string]string{"severity": "CRITICAL"},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
				"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{map[string]string{"introduced": "0"}, map[string]string{"fixed": "99.0.0"}}}}}}},
		"GO-2099-0002": {"id": "GO-2099-0002", "modified": "2099-01-01T00:00:00Z",
			"severity": []any{map[string]string{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
				"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{map[string]string{"introduced": "0"}, map[string]string{"fixed": "1.0.0"}}}}}}},
		"GHSA-2099-0003": {"id": "GHSA-2099-0003", "modified": "2099-01-01T00:00:00Z", "database_specific": map[string]string{"severity": "HIGH"},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "github.com/aws/smithy-go"},
				"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{map[string]string{"introduced": "0"}, map[string]string{"fixed": "99.0.0"}}}}}}},
		"GHSA-2099-0004": {"id": "GHSA-2099-0004", "modified": "2099-01-01T00:00:00Z", "database_specific": map[string]string{"severity": "CRITICAL"},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "github.com/aws/smithy-go"},
				"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{map[string]string{"introduced": "0"}, map[string]string{"fixed": "1.0.0"}}}}}}},
	}
	for id, r := range recs {
		writeFile(t, filepath.Join(dir, id+".json"), mustJSON(r))
	}
	return dir
}

// debianImage writes an OCI image layout of a Debian 12 root filesystem
// that holds only what convoy's scanner reads of it: /etc/os-release and a
// dpkg status database listing openssl's libssl3 3.0.11-1~deb12u2. (The
// trainer image is a lone Go binary, with no dpkg packages.) It is never
// run: the gate refuses it at CreateModel.
func debianImage(t *testing.T) string {
	t.Helper()
	return imagetest.Layout(t, []imagetest.File{
		{Name: "etc/os-release", Mode: 0o644, Content: []byte("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n")},
		{Name: "var/lib/dpkg/status", Mode: 0o644, Content: []byte("Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: 3.0.11-1~deb12u2\n\n" +
			"Package: bash\nStatus: install ok installed\nVersion: 5.2.15-2+b2\n")},
	}, v1.Config{Entrypoint: []string{"/bin/serve"}})
}

// debianOSV writes a Debian OSV record as osv.dev publishes them: it
// states no severity, only its CVE (in its id and "upstream").
func debianOSV(t *testing.T) string {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "DEBIAN-CVE-2099-0005.json"), mustJSON(map[string]any{
		"id": "DEBIAN-CVE-2099-0005", "modified": "2099-01-01T00:00:00Z", "upstream": []string{"CVE-2099-0005"},
		"details": "crafted for convoy's tests",
		"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Debian:12", "name": "openssl"},
			"ranges": []any{map[string]any{"type": "ECOSYSTEM", "events": []any{map[string]string{"introduced": "0"}, map[string]string{"fixed": "3.0.13-1~deb12u1"}}}}}}}))
	return dir
}

// nvdFeed gzips testdata/vulndb/nvdcve-2.0-2099.json, NVD 2.0 feed records
// that rate CVE-2099-0005 CRITICAL (and reject CVE-2099-0006), as NVD
// publishes its yearly feeds.
func nvdFeed(t *testing.T) string {
	raw, err := os.ReadFile("testdata/vulndb/nvdcve-2.0-2099.json")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(raw)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return writeFile(t, filepath.Join(t.TempDir(), "nvdcve-2.0-2099.json.gz"), b.Bytes())
}

// The image vulnerability gate, end to end: convoy up without a database
// says once that images are not scanned and refuses nothing; an import into
// the running convoy's data directory takes effect at once; CreateModel is
// then refused with a ValidationException and a training job fails with a
// ClientError, both naming the OSV record; convoy images scan lists it and
// --fail-on fails; a Debian record without a severity is UNKNOWN and
// allowed until NVD's feed rates its CVE CRITICAL, and is then refused,
// the report saying NVD rated it; --deny-image-severity none lets the
// image run.
func TestImageVulnerabilityGate(t *testing.T) {
	cli := harness.Tool(t, "aws")
	bin := harness.Binary(t)
	c := harness.Start(t, harness.Options{})
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("convoy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(true, "images", "import", "--data", c.DataDir, trainerImage(t), "trainer:1")
	if n := strings.Count(c.Logs(), "images are not being scanned"); n != 1 {
		t.Errorf("convoy logged the no-database warning %d times, want once:\n%s", n, c.Logs())
	}

	trust := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"sagemaker.amazonaws.com"},"Action":"sts:AssumeRole"}]}`
	role := str(awsJSON(t, c, cli, []string{"iam", "create-role", "--role-name", "trainer", "--assume-role-policy-document", trust}), "Role", "Arn")
	key := str(awsJSON(t, c, cli, []string{"kms", "create-key"}), "KeyMetadata", "Arn")
	for _, b := range []string{"input", "output"} {
		if r := c.AWS(t, cli, []string{"s3", "mb", "s3://" + b}); r.Err != nil {
			t.Fatalf("s3 mb %s: %v\n%s", b, r.Err, r.Stderr)
		}
	}
	modelOf := func(name, image string) []string {
		file := writeFile(t, filepath.Join(t.TempDir(), name+".json"), mustJSON(map[string]any{
			"ModelName": name, "ExecutionRoleArn": role, "PrimaryContainer": map[string]any{"Image": image}}))
		return []string{"sagemaker", "create-model", "--cli-input-json", "file://" + file}
	}
	model := func(name string) []string { return modelOf(name, "trainer:1") }

	// No database: nothing is refused.
	awsJSON(t, c, cli, model("before-import"))

	// Imported while convoy runs.
	out := run(true, "vulndb", "import", "--data", c.DataDir, vulnDB(t))
	if !strings.Contains(out, "Go") || !strings.Contains(out, "imported 4 records") {
		t.Errorf("vulndb import:\n%s", out)
	}
	if out := run(true, "vulndb", "status", "--data", c.DataDir); !strings.Contains(out, "4 records") {
		t.Errorf("vulndb status:\n%s", out)
	}
	out = run(true, "images", "scan", "--data", c.DataDir, "trainer:1")
	if !strings.Contains(out, "GO-2099-0001") || !strings.Contains(out, "CVE-2099-0001") || !strings.Contains(out, "CRITICAL") ||
		!strings.Contains(out, "GHSA-2099-0003") || strings.Contains(out, "GO-2099-0002") || strings.Contains(out, "GHSA-2099-0004") {
		t.Errorf("images scan:\n%s", out)
	}
	t.Logf("convoy images scan:\n%s", out)
	out = run(false, "images", "scan", "--data", c.DataDir, "trainer:1", "--fail-on", "critical")
	if !strings.Contains(out, "--fail-on critical") {
		t.Errorf("images scan --fail-on critical:\n%s", out)
	}
	var report struct {
		Digest   string
		Findings []struct {
			ID, Package, Severity string
			Fixed                 string `json:"fixed_version"`
		}
	}
	if err := json.Unmarshal([]byte(run(true, "images", "scan", "--data", c.DataDir, "trainer:1", "--json")), &report); err != nil {
		t.Fatal(err)
	}
	if len(report.Findings) != 2 || report.Findings[0].Package != "stdlib" || report.Findings[0].Fixed != "99.0.0" ||
		report.Findings[1].Package != "github.com/aws/smithy-go" || report.Findings[1].Severity != "HIGH" || !strings.HasPrefix(report.Digest, "sha256:") {
		t.Errorf("JSON report %+v", report)
	}

	r := c.AWS(t, cli, model("after-import"), "AWS_MAX_ATTEMPTS=1")
	if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationException)") || !strings.Contains(r.Stderr, "has known vulnerabilities") ||
		!strings.Contains(r.Stderr, "GO-2099-0001") || strings.Contains(r.Stderr, "GHSA-2099-0003") { // HIGH: below the default threshold
		t.Fatalf("create-model of a vulnerable image: err %v\n%s", r.Err, r.Stderr)
	}
	job := trainingJob("vulnerable", role, key, 1, 60, map[string]string{"mode": "train"})
	job["AlgorithmSpecification"].(map[string]any)["TrainingImage"] = "trainer:1"
	file := writeFile(t, filepath.Join(t.TempDir(), "job.json"), mustJSON(job))
	awsJSON(t, c, cli, []string{"sagemaker", "create-training-job", "--cli-input-json", "file://" + file})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(300 * time.Millisecond) {
		d := awsJSON(t, c, cli, []string{"sagemaker", "describe-training-job", "--training-job-name", "vulnerable"})
		if str(d, "TrainingJobStatus") == "InProgress" {
			if time.Now().After(deadline) {
				t.Fatal("training job still InProgress after a minute")
			}
			continue
		}
		if str(d, "TrainingJobStatus") != "Failed" || !strings.HasPrefix(str(d, "FailureReason"), "ClientError: image trainer:1 has known vulnerabilities") ||
			!strings.Contains(str(d, "FailureReason"), "GO-2099-0001") {
			t.Fatalf("vulnerable training job: %v", d)
		}
		t.Logf("FailureReason: %s", str(d, "FailureReason"))
		break
	}

	// Debian: osv.dev's records state no severity, so the finding is
	// UNKNOWN and the image allowed, until NVD's feed rates the CVE.
	run(true, "images", "import", "--data", c.DataDir, debianImage(t), "debian-app:1")
	out = run(true, "vulndb", "import", "--data", c.DataDir, debianOSV(t))
	if !strings.Contains(out, "Debian:12") || !strings.Contains(out, "import NVD's feeds too") {
		t.Errorf("vulndb import of a Debian record:\n%s", out)
	}
	type debianReport struct {
		Findings []struct {
			ID, Package, Severity string
			Source                string `json:"severity_source"`
			NVD                   *struct {
				CVE, Severity, CVSS string
				Score               float64
			}
		}
	}
	scanDebian := func() debianReport {
		t.Helper()
		var r debianReport
		if err := json.Unmarshal([]byte(run(true, "images", "scan", "--data", c.DataDir, "debian-app:1", "--json")), &r); err != nil {
			t.Fatal(err)
		}
		if len(r.Findings) != 1 || r.Findings[0].ID != "DEBIAN-CVE-2099-0005" || r.Findings[0].Package != "openssl" {
			t.Fatalf("debian-app:1 findings %+v", r.Findings)
		}
		return r
	}
	if f := scanDebian().Findings[0]; f.Severity != "UNKNOWN" || f.Source != "" || f.NVD != nil {
		t.Errorf("without NVD: %+v", f)
	}
	awsJSON(t, c, cli, modelOf("debian-before-nvd", "debian-app:1")) // the running convoy scans and caches it
	out = run(true, "vulndb", "import", "--data", c.DataDir, nvdFeed(t))
	if !strings.Contains(out, "NVD                      1 CVEs (1 rejected by NVD ignored)") || !strings.Contains(out, "NVD ratings of 1 CVEs") {
		t.Errorf("vulndb import of an NVD feed:\n%s", out)
	}
	if out := run(true, "vulndb", "status", "--data", c.DataDir); !strings.Contains(out, "NVD                      1 CVEs, imported") {
		t.Errorf("vulndb status:\n%s", out)
	}
	if f := scanDebian().Findings[0]; f.Severity != "CRITICAL" || f.Source != "nvd" || f.NVD == nil ||
		f.NVD.CVE != "CVE-2099-0005" || f.NVD.Score != 9.8 || f.NVD.CVSS != "3.1" { // NVD's Primary, not the CNA's HIGH
		t.Errorf("with NVD: %+v %+v", f, f.NVD)
	}
	out = run(false, "images", "scan", "--data", c.DataDir, "debian-app:1", "--fail-on", "critical")
	if !strings.Contains(out, "CRITICAL*") || !strings.Contains(out, "CVE-2099-0005") || !strings.Contains(out, "* rated by NVD") {
		t.Errorf("images scan debian-app:1:\n%s", out)
	}
	t.Logf("convoy images scan debian-app:1:\n%s", out)
	r = c.AWS(t, cli, modelOf("debian-after-nvd", "debian-app:1"), "AWS_MAX_ATTEMPTS=1")
	if r.Err == nil || !strings.Contains(r.Stderr, "(ValidationException)") ||
		!strings.Contains(r.Stderr, "DEBIAN-CVE-2099-0005 (CVE-2099-0005) CRITICAL (rated by NVD) in openssl 3.0.11-1~deb12u2") {
		t.Fatalf("create-model of debian-app:1 after the NVD import (the cached report must not be used): err %v\n%s", r.Err, r.Stderr)
	}

	// --deny-image-severity none: the same image may be used.
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	c = harness.Start(t, harness.Options{DataDir: c.DataDir, Args: []string{"--deny-image-severity", "none"}})
	awsJSON(t, c, cli, model("gate-off"))
	if strings.Contains(c.Logs(), "not being scanned") {
		t.Errorf("with a database, convoy says images are not scanned:\n%s", c.Logs())
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "vulndb", "db.json")); err != nil {
		t.Fatal(err)
	}
}
