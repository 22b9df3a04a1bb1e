package scan

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"convoy/internal/images"
)

// writeFiles writes name → content under dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

const dpkgStatus = `Package: libssl3
Status: install ok installed
Source: openssl
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit
 continuation line: Version: 9.9

Package: bash
Status: install ok installed
Version: 5.2.15-2+b2

Package: removed
Status: deinstall ok config-files
Version: 1.0
`

// fixtureRootFS is a Debian 12 root filesystem with two dpkg packages, a
// distroless status.d entry, a Python package, and a Go binary: the test
// binary itself, whose build information names its Go version.
func fixtureRootFS(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	writeFiles(t, root, map[string]string{
		"usr/lib/os-release":                   "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
		"var/lib/dpkg/status":                  dpkgStatus,
		"var/lib/dpkg/status.d/tzdata":         "Package: tzdata\nVersion: 2024a-0+deb12u1\n",
		"var/lib/dpkg/status.d/tzdata.md5sums": "abc  /usr/share/zoneinfo/UTC\n",
		"usr/lib/python3/dist-packages/Requests-2.31.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: Requests\nVersion: 2.31.0\n\nVersion: 0.0 in the body\n",
		"proc/self/exe-not-scanned":                                        "",
	})
	// Debian's /etc/os-release is a relative link into /usr/lib.
	if err := os.Symlink("../usr/lib/os-release", filepath.Join(root, "etc", "os-release")); err != nil {
		if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../usr/lib/os-release", filepath.Join(root, "etc", "os-release")); err != nil {
			t.Fatal(err)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/app"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// goVersion is the standard library version the test binary reports.
func goVersion(t *testing.T) string {
	v := goStdlibVersion(runtime.Version())
	if v == "" {
		t.Skipf("toolchain %s has no release version", runtime.Version())
	}
	return v
}

func TestInventory(t *testing.T) {
	gov := goVersion(t)
	inv, err := TakeInventory(fixtureRootFS(t))
	if err != nil {
		t.Fatal(err)
	}
	if inv.OS != "debian 12" {
		t.Errorf("OS %q, want debian 12", inv.OS)
	}
	var got []string
	for _, p := range inv.Packages {
		got = append(got, p.Ecosystem+" "+p.Name+" "+p.Version+" "+p.Location)
	}
	for _, want := range []string{
		"Debian:12 openssl 3.0.11-1~deb12u2 /var/lib/dpkg/status", // source name, binary version
		"Debian:12 bash 5.2.15-2+b2 /var/lib/dpkg/status",
		"Debian:12 tzdata 2024a-0+deb12u1 /var/lib/dpkg/status.d/tzdata",
		"PyPI requests 2.31.0 /usr/lib/python3/dist-packages/Requests-2.31.0.dist-info",
		"Go stdlib " + gov + " /usr/local/bin/app",
	} {
		if !slices.Contains(got, want) {
			t.Errorf("inventory lacks %q:\n%s", want, strings.Join(got, "\n"))
		}
	}
	for _, g := range got {
		if strings.Contains(g, "removed") || strings.Contains(g, "libssl3") || strings.Contains(g, "9.9") || strings.Contains(g, "0.0") {
			t.Errorf("inventory holds %q", g)
		}
	}
}

// A symlink in an image that points at the host's files is never followed:
// not to the host's os-release or dpkg status, not into a host directory.
func TestInventoryDoesNotFollowSymlinksOut(t *testing.T) {
	host := t.TempDir()
	writeFiles(t, host, map[string]string{
		"os-release":  "ID=debian\nVERSION_ID=12\n",
		"dpkg/status": "Package: hostpkg\nVersion: 1.0\n",
		"bin/tool":    "#!/bin/sh\n",
	})
	root := t.TempDir()
	for link, target := range map[string]string{
		"etc/os-release":          filepath.Join(host, "os-release"), // absolute
		"usr/lib/os-release":      "../../../../../../../../../.." + filepath.Join(host, "os-release"),
		"var/lib/dpkg/status":     filepath.Join(host, "dpkg/status"),
		"var/lib/dpkg/status.d/x": "/etc/passwd",
		"opt/hostdir":             host,
		"lib/apk/db/installed":    "/etc/os-release",
	} {
		p := filepath.Join(root, link)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	inv, err := TakeInventory(root)
	if err != nil {
		t.Fatal(err)
	}
	if inv.OS != "" || len(inv.Packages) != 0 {
		t.Errorf("read through a symlink out of the image: %+v", inv)
	}
}

func osvJSON(t *testing.T, rec map[string]any) string {
	t.Helper()
	rec["modified"] = "2024-06-01T00:00:00Z"
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func affected(eco, name string, events ...map[string]string) map[string]any {
	return map[string]any{"package": map[string]string{"ecosystem": eco, "name": name},
		"ranges": []any{map[string]any{"type": "ECOSYSTEM", "events": events}}}
}

func ev(k, v string) map[string]string { return map[string]string{k: v} }

const critical = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"

// osvFixture is a directory of OSV records for fixtureRootFS: some match,
// some are fixed, not yet introduced, of another release, or withdrawn.
func osvFixture(t *testing.T, gov string) string {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"DEB-1.json": osvJSON(t, map[string]any{"id": "DEB-1", "aliases": []string{"CVE-2024-0001"},
			"severity": []any{map[string]string{"type": "CVSS_V3", "score": critical}},
			"affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"), ev("fixed", "3.0.13-1~deb12u1"))}}),
		"DEB-2-fixed.json":         osvJSON(t, map[string]any{"id": "DEB-2", "affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"), ev("fixed", "3.0.11-1~deb12u1"))}}),
		"DEB-3-binary-name.json":   osvJSON(t, map[string]any{"id": "DEB-3", "affected": []any{affected("Debian:12", "libssl3", ev("introduced", "0"))}}),
		"DEB-4-other-release.json": osvJSON(t, map[string]any{"id": "DEB-4", "affected": []any{affected("Debian:11", "openssl", ev("introduced", "0"))}}),
		"DEB-5-epoch.json":         osvJSON(t, map[string]any{"id": "DEB-5", "affected": []any{affected("Debian:12", "bash", ev("introduced", "0"), ev("fixed", "1:1.0"))}}),
		"GO-1.json": osvJSON(t, map[string]any{"id": "GO-1", "database_specific": map[string]string{"severity": "HIGH"},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
				"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{ev("introduced", "0"), ev("fixed", "99.0.0")}}}}}}),
		"GO-2-fixed.json": osvJSON(t, map[string]any{"id": "GO-2", "affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
			"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{ev("introduced", "0"), ev("fixed", gov)}}}}}}),
		"GO-3-future.json": osvJSON(t, map[string]any{"id": "GO-3", "affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
			"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{ev("introduced", "99.0.0")}}}}}}),
		"GO-4-last.json": osvJSON(t, map[string]any{"id": "GO-4", "affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"},
			"ranges": []any{map[string]any{"type": "SEMVER", "events": []any{ev("introduced", "1.0.0"), ev("last_affected", gov)}}}}}}),
		"GO-5-withdrawn.json": osvJSON(t, map[string]any{"id": "GO-5", "withdrawn": "2024-07-01T00:00:00Z",
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "Go", "name": "stdlib"}, "versions": []string{gov}}}}),
		"sub/PYSEC-1.json": osvJSON(t, map[string]any{"id": "PYSEC-1", "database_specific": map[string]string{"severity": "MODERATE"},
			"affected": []any{map[string]any{"package": map[string]string{"ecosystem": "PyPI", "name": "requests"}, "versions": []string{"2.30.0", "2.31.0"}}}}),
		"README.txt": "not a record, not read",
	})
	return dir
}

func TestImportAndScan(t *testing.T) {
	gov := goVersion(t)
	data := t.TempDir()
	res, err := Import(data, osvFixture(t, gov))
	if err != nil {
		t.Fatal(err)
	}
	if res.Imported != 10 || res.Withdrawn != 1 || res.Ecosystems["Go"] != 4 || res.Ecosystems["Debian:12"] != 4 {
		t.Errorf("import result %+v", res)
	}
	for _, p := range []string{Dir(data), dbPath(data)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %o", p, perm)
		}
	}
	r := scanFixture(t, data)
	var got []string
	for _, f := range r.Findings {
		got = append(got, f.ID+" "+f.Severity.String()+" "+f.Package+" "+f.Version+" fixed="+f.Fixed)
	}
	want := []string{
		"DEB-1 CRITICAL openssl 3.0.11-1~deb12u2 fixed=3.0.13-1~deb12u1",
		"GO-1 HIGH stdlib " + gov + " fixed=99.0.0",
		"PYSEC-1 MEDIUM requests 2.31.0 fixed=",
		"DEB-5 UNKNOWN bash 5.2.15-2+b2 fixed=1:1.0", // an epoch sorts above any version without one
		"GO-4 UNKNOWN stdlib " + gov + " fixed=",
	}
	if !slices.Equal(got, want) {
		t.Errorf("findings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if r.Findings[0].Aliases[0] != "CVE-2024-0001" {
		t.Errorf("aliases %v", r.Findings[0].Aliases)
	}
	if r.Packages < 5 || r.Skipped < 1 { // the test binary's main module is (devel): skipped
		t.Errorf("packages %d, skipped %d", r.Packages, r.Skipped)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, r); err != nil || !strings.Contains(buf.String(), "CVE-2024-0001") {
		t.Errorf("table: %v\n%s", err, buf.String())
	}
	if err := Gate(r, Critical); err == nil || !strings.Contains(err.Error(), "DEB-1 (CVE-2024-0001) CRITICAL in openssl") {
		t.Errorf("gate: %v", err)
	}

	// A second import adds to the first; a withdrawn record removes one.
	more := t.TempDir()
	writeFiles(t, more, map[string]string{
		"DEB-1.json": osvJSON(t, map[string]any{"id": "DEB-1", "withdrawn": "2024-08-01T00:00:00Z"}),
		"ALP-1.json": osvJSON(t, map[string]any{"id": "ALP-1", "affected": []any{affected("Alpine:v3.20", "openssl", ev("introduced", "0"))}}),
	})
	if _, err := Import(data, more); err != nil {
		t.Fatal(err)
	}
	db2, err := Load(data)
	if err != nil {
		t.Fatal(err)
	}
	if db2.Records != 10 || db2.Vulns["DEB-1"] != nil || db2.Vulns["ALP-1"] == nil || db2.Version == r.Database.Version {
		t.Errorf("after second import: %d records, DEB-1 %v, versions %s %s", db2.Records, db2.Vulns["DEB-1"], r.Database.Version, db2.Version)
	}
}

func zipFile(t *testing.T, entries map[string]string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "all.zip")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for name, content := range entries {
		w, err := zw.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(content))
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func TestImportZip(t *testing.T) {
	data := t.TempDir()
	rec := func(id string) string {
		return osvJSON(t, map[string]any{"id": id, "affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"))}})
	}
	res, err := Import(data, zipFile(t, map[string]string{"DEB-1.json": rec("DEB-1"), "DEB-2.json": rec("DEB-2")}))
	if err != nil || res.Imported != 2 {
		t.Fatalf("import zip: %+v, %v", res, err)
	}
	before, _ := os.ReadFile(dbPath(data))
	for _, evil := range []string{"../evil.json", "/etc/evil.json", `a\..\..\evil.json`} {
		_, err := Import(data, zipFile(t, map[string]string{"DEB-3.json": rec("DEB-3"), evil: rec("DEB-4")}))
		if err == nil || !strings.Contains(err.Error(), "zip slip") {
			t.Errorf("zip with %q: %v, want a zip slip refusal", evil, err)
		}
	}
	after, _ := os.ReadFile(dbPath(data))
	if !bytes.Equal(before, after) {
		t.Error("a refused zip changed the database")
	}
}

func TestImportRefusesBadInput(t *testing.T) {
	data := t.TempDir()
	good := t.TempDir()
	writeFiles(t, good, map[string]string{"A.json": osvJSON(t, map[string]any{"id": "A", "affected": []any{affected("Go", "m", ev("introduced", "0"))}})})
	bad := t.TempDir()
	writeFiles(t, bad, map[string]string{
		"B.json": osvJSON(t, map[string]any{"id": "B"}),
		"C.json": `{"id": "C", "modified": `, // cut short
	})
	big := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(big, bytes.Repeat([]byte(" "), maxRecordSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	notOSV := filepath.Join(t.TempDir(), "package.json")
	os.WriteFile(notOSV, []byte(`{"name": "left-pad", "version": "1.0.0"}`), 0o600)

	// Nothing imported yet: a bad input leaves no database at all.
	if _, err := Import(data, good, bad); err == nil || !strings.Contains(err.Error(), "nothing was imported") {
		t.Fatalf("bad JSON imported: %v", err)
	}
	if _, err := Load(data); !errors.Is(err, ErrNoDatabase) {
		t.Fatalf("a failed import left a database: %v", err)
	}
	if _, err := Import(data, good); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dbPath(data))
	for _, in := range []string{bad, big, notOSV, filepath.Join(t.TempDir(), "missing.json")} {
		if _, err := Import(data, in); err == nil {
			t.Errorf("imported %s", in)
		} else {
			t.Logf("%s: %v", filepath.Base(in), err)
		}
	}
	after, _ := os.ReadFile(dbPath(data))
	if !bytes.Equal(before, after) {
		t.Error("a refused import changed the database")
	}
	entries, _ := os.ReadDir(Dir(data))
	for _, e := range entries {
		if e.Name() != "db.json" && e.Name() != "import.lock" {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

// The daemon's Scanner lets everything through without a database, picks
// up an import without a restart, and caches reports per digest and
// database version.
func TestScanner(t *testing.T) {
	gov := goVersion(t)
	data, root := t.TempDir(), fixtureRootFS(t)
	s := &Scanner{DataDir: data, Threshold: Critical}
	img := images.Image{Ref: "app:1", Digest: "sha256:" + strings.Repeat("a", 64)}
	ctx := context.Background()
	if err := s.CheckImage(ctx, img, root); err != nil {
		t.Fatalf("refused without a database: %v", err)
	}
	if _, err := Import(data, osvFixture(t, gov)); err != nil {
		t.Fatal(err)
	}
	err := s.CheckImage(ctx, img, root)
	var ge *GateError
	if !errors.As(err, &ge) || !strings.HasPrefix(err.Error(), "image app:1 has known vulnerabilities") {
		t.Fatalf("after import: %v", err)
	}
	// Cached: the root filesystem is no longer read.
	os.Remove(filepath.Join(root, "var/lib/dpkg/status"))
	if err := s.CheckImage(ctx, img, root); err == nil {
		t.Error("cached report lost")
	}
	s.Threshold = Unknown
	if err := s.CheckImage(ctx, img, root); err != nil {
		t.Errorf("threshold none refused: %v", err)
	}
	// A new import (a new database version) scans again.
	s.Threshold = Critical
	empty := t.TempDir()
	writeFiles(t, empty, map[string]string{"X.json": osvJSON(t, map[string]any{"id": "X"})})
	if _, err := Import(data, empty); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckImage(ctx, img, root); err != nil {
		t.Errorf("rescan after import still refuses: %v", err)
	}
	// A damaged database refuses rather than lets images through.
	if err := os.WriteFile(dbPath(data), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckImage(ctx, img, root); err == nil || !strings.Contains(err.Error(), "could not be scanned") {
		t.Errorf("damaged database: %v", err)
	}
}

// Alpine packages are listed under their origin (aports source package);
// dpkg packages on an OS convoy has no OSV ecosystem for are listed but
// skipped by Scan.
func TestInventoryAlpineAndUnknownOS(t *testing.T) {
	alpine := t.TempDir()
	writeFiles(t, alpine, map[string]string{
		"etc/os-release":       "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.20.3\n",
		"lib/apk/db/installed": "C:Q1abc=\nP:libcrypto3\nV:3.3.1-r0\no:openssl\n\nP:musl\nV:1.2.5-r0\n",
	})
	inv, err := TakeInventory(alpine)
	if err != nil {
		t.Fatal(err)
	}
	want := []Package{
		{Ecosystem: "Alpine:v3.20", Name: "musl", Version: "1.2.5-r0", Location: "/lib/apk/db/installed"},
		{Ecosystem: "Alpine:v3.20", Name: "openssl", Version: "3.3.1-r0", Location: "/lib/apk/db/installed"},
	}
	if !slices.Equal(inv.Packages, want) || inv.OS != "alpine 3.20.3" {
		t.Errorf("alpine inventory %+v", inv)
	}
	db := &DB{Version: "1", Vulns: map[string]*Vuln{"ALP-1": {ID: "ALP-1", Severity: High, Affected: []Affected{{Ecosystem: "Alpine:v3.20", Name: "openssl",
		Ranges: []Range{{Type: "ECOSYSTEM", Events: []Event{{Introduced: "0"}, {Fixed: "3.3.2-r0"}}}}}}}},
		Index: map[string][]string{"Alpine:v3.20/openssl": {"ALP-1"}}}
	if r := Scan(db, inv); len(r.Findings) != 1 || r.Findings[0].Fixed != "3.3.2-r0" {
		t.Errorf("alpine findings %+v", r.Findings)
	}

	// Ubuntu: Canonical's OSV ecosystems name LTS releases Ubuntu:24.04:LTS;
	// a record of that ecosystem matches the dpkg packages (by source name,
	// Debian version order) and its Canonical priority rates it.
	ubuntu := t.TempDir()
	writeFiles(t, ubuntu, map[string]string{
		"etc/os-release":      "ID=ubuntu\nVERSION_ID=\"24.04\"\nVERSION=\"24.04.1 LTS (Noble Numbat)\"\n",
		"var/lib/dpkg/status": dpkgStatus,
	})
	inv, err = TakeInventory(ubuntu)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Packages) != 2 || inv.Packages[0].Ecosystem != "Ubuntu:24.04:LTS" {
		t.Errorf("ubuntu inventory %+v", inv)
	}
	rec, err := parseOSV([]byte(`{"id": "UBUNTU-CVE-2099-1", "modified": "2099-01-01T00:00:00Z", "aliases": ["CVE-2099-1"],
		"affected": [{"package": {"ecosystem": "Ubuntu:24.04:LTS", "name": "openssl"},
			"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u3"}]}],
			"ecosystem_specific": {"ubuntu_priority": "high"}}]}`))
	if err != nil || rec.Severity != High {
		t.Fatalf("Ubuntu record: severity %s, %v", rec.Severity, err)
	}
	udb := &DB{Version: "1", Vulns: map[string]*Vuln{rec.ID: &rec}, Index: map[string][]string{"Ubuntu:24.04:LTS/openssl": {rec.ID}}}
	if r := Scan(udb, inv); len(r.Findings) != 1 || r.Findings[0].ID != rec.ID || r.Skipped != 0 {
		t.Errorf("ubuntu findings %+v, %d skipped", r.Findings, r.Skipped)
	}

	// dpkg packages on an OS with no OSV ecosystem here are listed, skipped.
	other := t.TempDir()
	writeFiles(t, other, map[string]string{
		"etc/os-release":      "ID=linuxmint\nVERSION_ID=\"22\"\n",
		"var/lib/dpkg/status": dpkgStatus,
	})
	inv, err = TakeInventory(other)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Packages) != 2 || inv.Packages[0].Ecosystem != "" {
		t.Errorf("other inventory %+v", inv)
	}
	if r := Scan(db, inv); r.Packages != 2 || r.Skipped != 2 {
		t.Errorf("other OS: %d packages, %d skipped", r.Packages, r.Skipped)
	}
}

// scanFixture scans the fixture root filesystem against the database of
// data.
func scanFixture(t *testing.T, data string) Report {
	t.Helper()
	db, err := Load(data)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := TakeInventory(fixtureRootFS(t))
	if err != nil {
		t.Fatal(err)
	}
	return Scan(db, inv)
}
