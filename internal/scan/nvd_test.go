package scan

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"convoy/internal/images"
)

// nvdMetricJSON is one CVSS metric as NVD 2.0 writes it: v2 keeps its
// rating outside cvssData.
func nvdMetricJSON(typ, version string, score float64, severity string) map[string]any {
	data := map[string]any{"version": version, "vectorString": "x", "baseScore": score}
	m := map[string]any{"source": "nvd@nist.gov", "type": typ, "cvssData": data}
	if version == "2.0" {
		m["baseSeverity"] = severity
	} else {
		data["baseSeverity"] = severity
	}
	return m
}

// nvdCVE is one element of an NVD 2.0 "vulnerabilities" array; metrics
// maps cvssMetricV31 … to its metrics.
func nvdCVE(id, status string, metrics map[string][]any) map[string]any {
	return map[string]any{"cve": map[string]any{"id": id, "sourceIdentifier": "cve@mitre.org", "vulnStatus": status,
		"descriptions": []any{map[string]string{"lang": "en", "value": "crafted"}}, "metrics": metrics,
		"configurations": []any{map[string]any{"nodes": []any{map[string]any{"operator": "OR", "cpeMatch": []any{}}}}}}}
}

// nvd20 is an NVD 2.0 feed (or API response) of cves.
func nvd20(t testing.TB, cves ...map[string]any) string {
	b, err := json.Marshal(map[string]any{"resultsPerPage": len(cves), "startIndex": 0, "totalResults": len(cves),
		"format": "NVD_CVE", "version": "2.0", "timestamp": "2024-06-01T00:00:00.000", "vulnerabilities": cves})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func gz(t testing.TB, s string) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func parseNVDString(s string) (map[string]*NVDRating, error) {
	got := map[string]*NVDRating{}
	_, err := parseNVD(strings.NewReader(s), got)
	return got, err
}

func TestParseNVD20(t *testing.T) {
	m := nvdMetricJSON
	feed := nvd20(t,
		// NVD's own (Primary) rating wins over the CNA's (Secondary), even
		// when the CNA's is higher.
		nvdCVE("CVE-2024-0001", "Analyzed", map[string][]any{"cvssMetricV31": {m("Secondary", "3.1", 9.8, "CRITICAL"), m("Primary", "3.1", 7.5, "HIGH")}}),
		// v3.1 before v4.0, v3.0 and v2.
		nvdCVE("CVE-2024-0002", "Analyzed", map[string][]any{
			"cvssMetricV40": {m("Primary", "4.0", 9.3, "CRITICAL")}, "cvssMetricV31": {m("Primary", "3.1", 5.3, "MEDIUM")},
			"cvssMetricV30": {m("Primary", "3.0", 9.8, "CRITICAL")}, "cvssMetricV2": {m("Primary", "2.0", 10, "HIGH")}}),
		// v4.0 before v3.0.
		nvdCVE("CVE-2024-0003", "Modified", map[string][]any{
			"cvssMetricV40": {m("Primary", "4.0", 2.1, "LOW")}, "cvssMetricV30": {m("Primary", "3.0", 9.8, "CRITICAL")}}),
		// A Primary v2 before a Secondary v3.1.
		nvdCVE("CVE-2013-0004", "Analyzed", map[string][]any{
			"cvssMetricV31": {m("Secondary", "3.1", 9.8, "CRITICAL")}, "cvssMetricV2": {m("Primary", "2.0", 5, "MEDIUM")}}),
		// Only a CNA's rating (NVD's backlog): taken.
		nvdCVE("CVE-2024-0005", "Awaiting Analysis", map[string][]any{"cvssMetricV31": {m("Secondary", "3.1", 9.1, "CRITICAL")}}),
		// v2 only: the rating is the metric's own baseSeverity.
		nvdCVE("CVE-2010-0006", "Analyzed", map[string][]any{"cvssMetricV2": {m("Primary", "2.0", 6.8, "MEDIUM")}}),
		// Rejected: no rating, but marked so that an import removes one.
		nvdCVE("CVE-2024-0007", "Rejected", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 9.8, "CRITICAL")}}),
		// Not rated yet, and a score NONE (0.0): left out.
		nvdCVE("CVE-2024-0008", "Received", map[string][]any{}),
		nvdCVE("CVE-2024-0009", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 0, "NONE")}}),
		// No baseSeverity: the score's rating.
		nvdCVE("CVE-2024-0010", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 9.0, "")}}),
	)
	got, err := parseNVDString(feed)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*NVDRating{
		"CVE-2024-0001": {Severity: High, Score: 7.5, CVSS: "3.1"},
		"CVE-2024-0002": {Severity: Medium, Score: 5.3, CVSS: "3.1"},
		"CVE-2024-0003": {Severity: Low, Score: 2.1, CVSS: "4.0"},
		"CVE-2013-0004": {Severity: Medium, Score: 5, CVSS: "2.0"},
		"CVE-2024-0005": {Severity: Critical, Score: 9.1, CVSS: "3.1"},
		"CVE-2010-0006": {Severity: Medium, Score: 6.8, CVSS: "2.0"},
		"CVE-2024-0007": nil,
		"CVE-2024-0010": {Severity: Critical, Score: 9.0, CVSS: "3.1"},
	}
	if !reflect.DeepEqual(got, want) {
		for id := range mergeKeys(got, want) {
			if !reflect.DeepEqual(got[id], want[id]) {
				t.Errorf("%s: got %+v, want %+v", id, got[id], want[id])
			}
		}
	}
}

func mergeKeys(a, b map[string]*NVDRating) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func TestParseNVD11(t *testing.T) {
	item := func(id string, impact map[string]any) map[string]any {
		return map[string]any{"cve": map[string]any{"data_type": "CVE", "CVE_data_meta": map[string]string{"ID": id, "ASSIGNER": "cve@mitre.org"}},
			"configurations": map[string]any{"nodes": []any{}}, "impact": impact, "publishedDate": "2023-01-01T00:00Z"}
	}
	v3 := func(version string, score float64, sev string) map[string]any {
		return map[string]any{"cvssV3": map[string]any{"version": version, "baseScore": score, "baseSeverity": sev}, "exploitabilityScore": 3.9}
	}
	v2 := func(score float64, sev string) map[string]any {
		return map[string]any{"cvssV2": map[string]any{"version": "2.0", "baseScore": score}, "severity": sev}
	}
	b, _ := json.Marshal(map[string]any{"CVE_data_type": "CVE", "CVE_data_format": "MITRE", "CVE_data_version": "4.0",
		"CVE_data_numberOfCVEs": "4", "CVE_data_timestamp": "2023-06-01T00:00Z", "CVE_Items": []any{
			item("CVE-2023-0001", map[string]any{"baseMetricV3": v3("3.1", 9.8, "CRITICAL"), "baseMetricV2": v2(7.5, "HIGH")}),
			item("CVE-2023-0002", map[string]any{"baseMetricV3": v3("3.0", 4.3, "MEDIUM")}),
			item("CVE-2009-0003", map[string]any{"baseMetricV2": v2(7.5, "HIGH")}),
			item("CVE-2023-0004", map[string]any{}), // rejected, or not analysed yet
		}})
	got, err := parseNVDString(string(b))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*NVDRating{
		"CVE-2023-0001": {Severity: Critical, Score: 9.8, CVSS: "3.1"},
		"CVE-2023-0002": {Severity: Medium, Score: 4.3, CVSS: "3.0"},
		"CVE-2009-0003": {Severity: High, Score: 7.5, CVSS: "2.0"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestParseNVDRefuses(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `{}`, `{"vulnerabilities": {}}`, `{"vulnerabilities": [1]}`,
		`{"vulnerabilities": [{"cve": {"id": "GHSA-1"}}]}`,
		`{"vulnerabilities": [{"cve": {"id": "CVE-1", "metrics": {"cvssMetricV31": [{"cvssData": {"baseScore": "high"}}]}}}]}`,
		`{"vulnerabilities": [{"cve": {"id": "CVE-1"}}]`, // cut short
		`{"vulnerabilities": []} {}`,
		`{"CVE_Items": [{"cve": {}}]}`,
		`{"x": ` + strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1) + `, "vulnerabilities": []}`,
	} {
		if _, err := parseNVDString(in); err == nil || !strings.Contains(err.Error(), "NVD") {
			t.Errorf("parseNVD(%.60q) = %v, want an error that says it is not NVD", in, err)
		}
	}
}

func TestIsNVD(t *testing.T) {
	for in, want := range map[string]bool{
		nvd20(t):                               true,
		`{"CVE_data_type":"CVE","CVE_Items":[`: true, // the start of a large 1.1 feed
		`{"id":"GO-1","modified":"x","summary":"vulnerabilities"}`:                false,
		`[{"id":"GO-1","modified":"x"}]`:                                          false,
		`{"id":"GO-1","modified":"x","database_specific":{"vulnerabilities":[]}}`: false,
	} {
		if got := isNVD([]byte(in)); got != want {
			t.Errorf("isNVD(%.60q) = %v, want %v", in, got, want)
		}
	}
}

func TestCVEIDs(t *testing.T) {
	for _, tc := range []struct {
		id                string
		aliases, upstream []string
		want              []string
	}{
		{"DEBIAN-CVE-2024-1234", nil, []string{"CVE-2024-1234"}, []string{"CVE-2024-1234"}},
		{"DSA-5555-1", nil, []string{"CVE-2023-1", "CVE-2023-2"}, []string{"CVE-2023-1", "CVE-2023-2"}},
		{"DLA-3333-1", []string{"CVE-2023-3"}, nil, []string{"CVE-2023-3"}},
		{"CVE-2024-5", []string{"GHSA-x"}, nil, []string{"CVE-2024-5"}},
		{"UBUNTU-CVE-2024-6", nil, nil, []string{"CVE-2024-6"}},
		{"GO-2024-1", []string{"GHSA-y"}, nil, nil},
	} {
		if got := cveIDs(tc.id, tc.aliases, tc.upstream); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("cveIDs(%s, %v, %v) = %v, want %v", tc.id, tc.aliases, tc.upstream, got, tc.want)
		}
	}
	v, err := parseOSV([]byte(`{"id":"DSA-5555-1","modified":"x","upstream":["CVE-2023-1"],"related":["CVE-2023-9"]}`))
	if err != nil || !reflect.DeepEqual(v.CVEs, []string{"CVE-2023-1"}) {
		t.Errorf("parseOSV kept CVEs %v, %v", v.CVEs, err)
	}
}

// debianFixture is a directory of Debian-style OSV records for
// fixtureRootFS's openssl 3.0.11-1~deb12u2, without severities as osv.dev
// publishes them, and one record that states its own (LOW).
func debianFixture(t *testing.T) string {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"DEBIAN-CVE-2099-0001.json": osvJSON(t, map[string]any{"id": "DEBIAN-CVE-2099-0001", "upstream": []string{"CVE-2099-0001"},
			"affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"), ev("fixed", "3.0.13-1~deb12u1"))}}),
		"DSA-9999-1.json": osvJSON(t, map[string]any{"id": "DSA-9999-1", "upstream": []string{"CVE-2099-0002", "CVE-2099-0003"},
			"affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"), ev("fixed", "3.0.13-1~deb12u1"))}}),
		"DEBIAN-CVE-2099-0004.json": osvJSON(t, map[string]any{"id": "DEBIAN-CVE-2099-0004",
			"affected": []any{affected("Debian:12", "bash", ev("introduced", "0"))}}),
		"DEB-OWN.json": osvJSON(t, map[string]any{"id": "DEB-OWN", "aliases": []string{"CVE-2099-0005"},
			"severity": []any{map[string]string{"type": "CVSS_V3", "score": "CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}},
			"affected": []any{affected("Debian:12", "openssl", ev("introduced", "0"))}}),
	})
	return dir
}

// nvdFixture rates the CVEs of debianFixture: CVE-2099-0001 CRITICAL, of
// DSA-9999-1's two the higher one (HIGH) counts, CVE-2099-0004 none, and
// CVE-2099-0005 CRITICAL (DEB-OWN keeps its own LOW).
func nvdFixture(t *testing.T) string {
	m := nvdMetricJSON
	p := filepath.Join(t.TempDir(), "nvdcve-2.0-2099.json.gz")
	feed := nvd20(t,
		nvdCVE("CVE-2099-0001", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 9.8, "CRITICAL")}}),
		nvdCVE("CVE-2099-0002", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 5.0, "MEDIUM")}}),
		nvdCVE("CVE-2099-0003", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 7.1, "HIGH")}}),
		nvdCVE("CVE-2099-0005", "Analyzed", map[string][]any{"cvssMetricV31": {m("Primary", "3.1", 9.8, "CRITICAL")}}),
	)
	if err := os.WriteFile(p, gz(t, feed), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// scanDebian is scanFixture's report with only its Debian findings.
func scanDebian(t *testing.T, data string) Report {
	t.Helper()
	r := scanFixture(t, data)
	var debian []Finding
	for _, f := range r.Findings {
		if strings.HasPrefix(f.Ecosystem, "Debian") {
			debian = append(debian, f)
		}
	}
	r.Findings = debian
	return r
}

// A Debian record without a severity takes NVD's rating of its CVE, and
// says so; a record with its own severity keeps it; the order of the
// imports does not matter.
func TestNVDSeverity(t *testing.T) {
	osvThenNVD, nvdThenOSV := t.TempDir(), t.TempDir()
	if _, err := Import(osvThenNVD, debianFixture(t)); err != nil {
		t.Fatal(err)
	}
	before := scanDebian(t, osvThenNVD)
	res, err := Import(osvThenNVD, nvdFixture(t))
	if err != nil || res.NVDFiles != 1 || res.NVD != 4 || res.Imported != 0 || len(res.DB.NVD) != 4 || res.DB.NVDImported.IsZero() {
		t.Fatalf("NVD import: %+v, %v", res, err)
	}
	if _, err := Import(nvdThenOSV, nvdFixture(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := Import(nvdThenOSV, debianFixture(t)); err != nil {
		t.Fatal(err)
	}

	type row struct {
		ID       string
		Severity Severity
		Source   string
		NVD      string
	}
	rows := func(r Report) []row {
		var out []row
		for _, f := range r.Findings {
			x := row{f.ID, f.Severity, f.SeveritySource, ""}
			if f.NVD != nil {
				x.NVD = f.NVD.CVE + " " + f.NVD.CVSS
			}
			out = append(out, x)
		}
		return out
	}
	wantBefore := []row{{"DEB-OWN", Low, "record", ""}, {"DEBIAN-CVE-2099-0004", Unknown, "", ""}, {"DEBIAN-CVE-2099-0001", Unknown, "", ""}, {"DSA-9999-1", Unknown, "", ""}}
	if got := rows(before); !reflect.DeepEqual(got, wantBefore) {
		t.Errorf("without NVD:\n got %+v\nwant %+v", got, wantBefore)
	}
	want := []row{
		{"DEBIAN-CVE-2099-0001", Critical, "nvd", "CVE-2099-0001 3.1"},
		{"DSA-9999-1", High, "nvd", "CVE-2099-0003 3.1"},
		{"DEB-OWN", Low, "record", ""},
		{"DEBIAN-CVE-2099-0004", Unknown, "", ""},
	}
	a, b := scanDebian(t, osvThenNVD), scanDebian(t, nvdThenOSV)
	if got := rows(a); !reflect.DeepEqual(got, want) {
		t.Errorf("OSV then NVD:\n got %+v\nwant %+v", got, want)
	}
	ac, bc := a, b
	ac.Scanned, bc.Scanned, ac.Database, bc.Database = time.Time{}, time.Time{}, DatabaseInfo{}, DatabaseInfo{}
	if !reflect.DeepEqual(ac, bc) {
		t.Errorf("the order of imports changed the report:\n%+v\n%+v", ac, bc)
	}

	// The gate refuses it, and says that NVD rated it; so do the table and
	// the JSON report.
	err = Gate(a, Critical)
	if err == nil || !strings.Contains(err.Error(), "DEBIAN-CVE-2099-0001 (CVE-2099-0001) CRITICAL (rated by NVD) in openssl") {
		t.Errorf("gate: %v", err)
	}
	var tbl bytes.Buffer
	WriteTable(&tbl, a)
	if !strings.Contains(tbl.String(), "CRITICAL*") || !strings.Contains(tbl.String(), "* rated by NVD") || !strings.Contains(tbl.String(), "NVD ratings of 4 CVEs") {
		t.Errorf("table:\n%s", tbl.String())
	}
	js, _ := json.Marshal(a.Findings[0])
	for _, want := range []string{`"severity":"CRITICAL"`, `"severity_source":"nvd"`, `"nvd":{"cve":"CVE-2099-0001","severity":"CRITICAL","score":9.8,"cvss":"3.1"}`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("JSON finding lacks %s: %s", want, js)
		}
	}
}

// A rejected CVE loses its rating at the next import.
func TestNVDRejectedRemoves(t *testing.T) {
	data := t.TempDir()
	if _, err := Import(data, nvdFixture(t)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "api.json")
	writeFiles(t, filepath.Dir(p), map[string]string{"api.json": nvd20(t, nvdCVE("CVE-2099-0001", "Rejected", nil))})
	res, err := Import(data, p)
	if err != nil || res.NVDRejected != 1 || res.DB.NVD["CVE-2099-0001"] != nil || len(res.DB.NVD) != 3 {
		t.Errorf("rejected: %+v, %v", res, err)
	}
}

// NVD files are read plain or gzip-compressed, alone, in directories and
// in zip files; a gzip bomb and malformed JSON are refused and leave the
// database as it was.
func TestImportNVDInputs(t *testing.T) {
	feed := nvd20(t, nvdCVE("CVE-2099-0001", "Analyzed", map[string][]any{"cvssMetricV31": {nvdMetricJSON("Primary", "3.1", 9.8, "CRITICAL")}}))
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"nvd/nvdcve-2.0-2099.json.gz": string(gz(t, feed)), "osv/A.json": osvJSON(t, map[string]any{"id": "A"})})
	named := filepath.Join(t.TempDir(), "feed.dat") // any name: told by its content
	os.WriteFile(named, []byte(feed), 0o600)
	for name, in := range map[string]string{
		"gzip file": nvdFixture(t), "directory": dir, "plain, any name": named,
		"zip": zipFile(t, map[string]string{"nvd.json": feed, "nvd2.json.gz": string(gz(t, feed))}),
	} {
		res, err := Import(t.TempDir(), in)
		if err != nil || res.NVD == 0 || res.DB.NVD["CVE-2099-0001"] == nil {
			t.Errorf("%s: %+v, %v", name, res, err)
		}
	}

	data := t.TempDir()
	if _, err := Import(data, debianFixture(t), nvdFixture(t)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(dbPath(data))
	malformed := filepath.Join(t.TempDir(), "nvdcve-2.0-2098.json")
	os.WriteFile(malformed, []byte(`{"format":"NVD_CVE","vulnerabilities":[{"cve":{"id":"CVE-2098-1","metrics":{"cvssMetricV31":[{"type":"Primary","cvssData":{"baseScore":9.8,`), 0o600)
	badGzip := filepath.Join(t.TempDir(), "nvdcve-2.0-2097.json.gz")
	os.WriteFile(badGzip, gz(t, feed)[:40], 0o600)
	bomb := gzipBomb(t)
	for name, in := range map[string]string{"malformed JSON": malformed, "cut-short gzip": badGzip, "gzip bomb": bomb} {
		_, err := Import(data, nvdFixture(t), in)
		if err == nil || !strings.Contains(err.Error(), "nothing was imported") {
			t.Errorf("%s imported: %v", name, err)
		}
		if name == "gzip bomb" && (err == nil || !strings.Contains(err.Error(), "decompresses to more than 1024 MiB")) {
			t.Errorf("gzip bomb: %v, want an error that says it decompresses too large", err)
		}
		t.Logf("%s: %v", name, err)
	}
	if after, _ := os.ReadFile(dbPath(data)); !bytes.Equal(before, after) {
		t.Error("a refused import changed the database")
	}
}

// gzipBomb writes an NVD-looking gzip file that decompresses to just over
// maxNVDSize: the start of a feed, then whitespace. gzip readers read
// concatenated members as one stream, so one compressed member of 64 MiB
// of spaces is repeated rather than compressing a GiB.
func gzipBomb(t *testing.T) string {
	t.Helper()
	const chunk = 64 << 20
	var member bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&member, gzip.BestCompression)
	zw.Write(bytes.Repeat([]byte(" "), chunk))
	zw.Close()
	p := filepath.Join(t.TempDir(), "nvdcve-2.0-2099.json.gz")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Write(gz(t, `{"format":"NVD_CVE","vulnerabilities":[`))
	for range maxNVDSize/chunk + 1 {
		f.Write(member.Bytes())
	}
	return p
}

// A database written before convoy read NVD files (format 1, records
// without "cves", no "nvd") loads as it is, and its records take NVD's
// ratings once NVD files are imported.
func TestLoadFormat1WithoutNVD(t *testing.T) {
	data := t.TempDir()
	old := `{"format":1,"version":"2024-06-01T00:00:00Z","imported":"2024-06-01T00:00:00Z","records":1,` +
		`"ecosystems":{"Debian:12":1},"index":{"Debian:12/openssl":["DEBIAN-CVE-2099-0001"]},` +
		`"vulns":{"DEBIAN-CVE-2099-0001":{"id":"DEBIAN-CVE-2099-0001","severity":"UNKNOWN","affected":[{"ecosystem":"Debian:12","name":"openssl",` +
		`"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.13-1~deb12u1"}]}]}]}}}`
	writeFiles(t, Dir(data), map[string]string{"db.json": old})
	if r := scanDebian(t, data); len(r.Findings) != 1 || r.Findings[0].Severity != Unknown || r.Database.NVDCVEs != 0 {
		t.Fatalf("old database: %+v", r)
	}
	if _, err := Import(data, nvdFixture(t)); err != nil {
		t.Fatal(err)
	}
	db, err := Load(data)
	if err != nil || db.Format != dbFormat || db.Records != 1 {
		t.Fatalf("after NVD import: %+v, %v", db, err)
	}
	if r := scanDebian(t, data); len(r.Findings) != 1 || r.Findings[0].Severity != Critical || r.Findings[0].SeveritySource != SourceNVD {
		t.Errorf("old record with NVD: %+v", r.Findings)
	}
}

// An NVD import changes the database version, so the daemon's cached
// report is made again and the gate refuses what NVD rates CRITICAL.
func TestScannerNVDImport(t *testing.T) {
	data, root := t.TempDir(), fixtureRootFS(t)
	s := &Scanner{DataDir: data, Threshold: Critical}
	img := images.Image{Ref: "app:1", Digest: "sha256:" + strings.Repeat("b", 64)}
	ctx := context.Background()
	if _, err := Import(data, debianFixture(t)); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckImage(ctx, img, root); err != nil {
		t.Fatalf("UNKNOWN findings refused: %v", err)
	}
	if _, err := Import(data, nvdFixture(t)); err != nil {
		t.Fatal(err)
	}
	var ge *GateError
	if err := s.CheckImage(ctx, img, root); !errors.As(err, &ge) || ge.Findings[0].SeveritySource != SourceNVD {
		t.Errorf("after the NVD import the cached report was used: %v", err)
	}
}

func FuzzParseNVD(f *testing.F) {
	m := nvdMetricJSON
	f.Add([]byte(nvd20(f,
		nvdCVE("CVE-2024-0001", "Analyzed", map[string][]any{"cvssMetricV31": {m("Secondary", "3.1", 9.8, "CRITICAL"), m("Primary", "3.1", 7.5, "HIGH")}}),
		nvdCVE("CVE-2024-0002", "Rejected", nil),
		nvdCVE("CVE-2010-0003", "Analyzed", map[string][]any{"cvssMetricV2": {m("Primary", "2.0", 6.8, "MEDIUM")}, "cvssMetricV40": {m("Secondary", "4.0", 1, "LOW")}}))))
	f.Add([]byte(`{"CVE_Items":[{"cve":{"CVE_data_meta":{"ID":"CVE-2023-1"}},"impact":{"baseMetricV3":{"cvssV3":{"version":"3.0","baseScore":7.5,"baseSeverity":"HIGH"}},"baseMetricV2":{"severity":"LOW","cvssV2":{"baseScore":2}}}}]}`))
	f.Add([]byte(`{"a":[[{}]],"vulnerabilities":[],"CVE_Items":[]}`))
	f.Add([]byte(`{"vulnerabilities":[{"cve":{"id":"CVE-1","metrics":{"cvssMetricV31":[{"cvssData":{"baseScore":11}}]}}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := map[string]*NVDRating{}
		n, err := parseNVD(bytes.NewReader(b), got)
		if err != nil {
			return
		}
		rated := 0
		for id, r := range got {
			if !validCVE(id) {
				t.Fatalf("kept %q, not a CVE id", id)
			}
			if r == nil {
				continue
			}
			rated++
			if r.Severity <= Unknown || r.Severity > Critical || r.Score < 0 || r.Score > 10 || r.CVSS == "" {
				t.Fatalf("%s: rating %+v", id, r)
			}
		}
		if rated > n {
			t.Fatalf("%d ratings kept, %d counted", rated, n)
		}
		// The import path (isNVD, then parseNVD) reads the same bytes the
		// same way when they are gzip-compressed.
		if isNVD(b) {
			im := &importer{fresh: map[string]*Vuln{}, withdrawn: map[string]bool{}, nvd: map[string]*NVDRating{}}
			if err := im.read("f", bytes.NewReader(gz(t, string(b)))); err != nil || !reflect.DeepEqual(im.nvd, got) {
				t.Fatalf("gzip-compressed: %v, %v; plain: %v", im.nvd, err, got)
			}
		}
	})
}

func TestSqueezeSpace(t *testing.T) {
	in := "{ \n\t \"a\" :  \"x  \\\"  y\\\\\"  ,\r\n\"b\":[ 1 ,  2 ]   }   "
	got, err := io.ReadAll(&squeezeSpace{r: strings.NewReader(in)})
	if want := "{ \"a\" : \"x  \\\"  y\\\\\" ,\r\"b\":[ 1 , 2 ] } "; err != nil || string(got) != want {
		t.Errorf("squeezeSpace(%q) = %q, %v; want %q", in, got, err, want)
	}
}
