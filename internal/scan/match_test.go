package scan

import (
	"strings"
	"testing"
)

func TestCompareDebian(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1:1.0", "2.0", 1},    // the epoch wins
		{"1.0~rc1", "1.0", -1}, // tilde sorts before the release
		{"1.0", "1.0", 0},
		{"3.0.11-1~deb12u2", "3.0.13-1~deb12u1", -1},
		{"1.2-1", "1.2-1+deb12u1", -1},
		{"2.36-9+deb12u4", "2.36-9+deb12u10", -1},
	} {
		got, err := compareDebian(tc.a, tc.b)
		if err != nil || got != tc.want {
			t.Errorf("compareDebian(%q, %q) = %d, %v; want %d", tc.a, tc.b, got, err, tc.want)
		}
	}
}

func TestAffects(t *testing.T) {
	rng := func(typ string, events ...Event) []Range { return []Range{{Type: typ, Events: events}} }
	intro := func(v string) Event { return Event{Introduced: v} }
	fixed := func(v string) Event { return Event{Fixed: v} }
	last := func(v string) Event { return Event{LastAffected: v} }
	for _, tc := range []struct {
		name      string
		a         Affected
		version   string
		want      bool
		wantFixed string
	}{
		{"debian below fix", Affected{Ecosystem: "Debian:12", Ranges: rng("ECOSYSTEM", intro("0"), fixed("3.0.13-1~deb12u1"))}, "3.0.11-1~deb12u2", true, "3.0.13-1~deb12u1"},
		{"debian at fix", Affected{Ecosystem: "Debian:12", Ranges: rng("ECOSYSTEM", intro("0"), fixed("3.0.13-1~deb12u1"))}, "3.0.13-1~deb12u1", false, ""},
		{"debian epoch above fix", Affected{Ecosystem: "Debian:12", Ranges: rng("ECOSYSTEM", intro("0"), fixed("2.0"))}, "1:1.0", false, ""},
		{"debian tilde below fix", Affected{Ecosystem: "Debian:12", Ranges: rng("ECOSYSTEM", intro("0"), fixed("1.0"))}, "1.0~rc1", true, "1.0"},
		{"not yet introduced", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("1.5.0"), fixed("1.6.0"))}, "v1.4.9", false, ""},
		{"introduced, go v prefix", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("1.5.0"), fixed("1.6.0"))}, "v1.5.0", true, "1.6.0"},
		{"last_affected at", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("0"), last("1.5.0"))}, "v1.5.0", true, ""},
		{"last_affected above", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("0"), last("1.5.0"))}, "v1.5.1", false, ""},
		{"second interval", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("0"), fixed("1.2.0"), intro("1.4.0"), fixed("1.4.3"))}, "v1.4.1", true, "1.4.3"},
		{"between intervals", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("0"), fixed("1.2.0"), intro("1.4.0"), fixed("1.4.3"))}, "v1.3.0", false, ""},
		{"events out of order", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", fixed("1.4.3"), intro("1.4.0"))}, "v1.4.1", true, "1.4.3"},
		{"explicit versions", Affected{Ecosystem: "PyPI", Versions: []string{"2.30.0", "2.31.0"}}, "2.31.0", true, ""},
		{"explicit versions miss", Affected{Ecosystem: "PyPI", Versions: []string{"2.30.0"}}, "2.31.0", false, ""},
		{"pypi range", Affected{Ecosystem: "PyPI", Ranges: rng("ECOSYSTEM", intro("2.0"), fixed("2.32.0"))}, "2.31.0", true, "2.32.0"},
		{"alpine range", Affected{Ecosystem: "Alpine:v3.20", Ranges: rng("ECOSYSTEM", intro("0"), fixed("3.3.2-r0"))}, "3.3.1-r0", true, "3.3.2-r0"},
		{"alpine fixed", Affected{Ecosystem: "Alpine:v3.20", Ranges: rng("ECOSYSTEM", intro("0"), fixed("3.3.2-r0"))}, "3.3.2-r1", false, ""},
		{"git range ignored", Affected{Ecosystem: "Go", Ranges: rng("GIT", intro("0"))}, "v1.0.0", false, ""},
		{"unreadable version", Affected{Ecosystem: "Go", Ranges: rng("SEMVER", intro("0"), fixed("1.0.0"))}, "(devel)", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, fixed := tc.a.affects(tc.version)
			if got != tc.want || fixed != tc.wantFixed {
				t.Errorf("affects(%q) = %v, %q; want %v, %q", tc.version, got, fixed, tc.want, tc.wantFixed)
			}
		})
	}
}

func TestSeverity(t *testing.T) {
	for _, tc := range []struct {
		name, record string
		want         Severity
	}{
		{"ghsa moderate", `{"id":"GHSA-1","modified":"2024-01-01T00:00:00Z","database_specific":{"severity":"MODERATE"}}`, Medium},
		{"ghsa beats cvss", `{"id":"GHSA-2","modified":"x","database_specific":{"severity":"LOW"},"severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}`, Low},
		{"cvss 3.1 critical", `{"id":"CVE-1","modified":"x","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}`, Critical},
		{"cvss 3.1 low", `{"id":"CVE-2","modified":"x","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N"}]}`, Low},
		{"cvss 3.0 high", `{"id":"CVE-3","modified":"x","severity":[{"type":"CVSS_V3","score":"CVSS:3.0/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:N"}]}`, High},
		{"affected-level cvss", `{"id":"CVE-4","modified":"x","affected":[{"package":{"ecosystem":"Go","name":"m"},"severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}]}]}`, Critical},
		{"ubuntu record priority", `{"id":"UBUNTU-CVE-1","modified":"x","severity":[{"type":"Ubuntu","score":"critical"}]}`, Critical},
		{"ubuntu negligible", `{"id":"UBUNTU-CVE-2","modified":"x","severity":[{"type":"Ubuntu","score":"negligible"}]}`, Low},
		{"ubuntu affected priority", `{"id":"UBUNTU-CVE-3","modified":"x","affected":[{"package":{"ecosystem":"Ubuntu:22.04:LTS","name":"p"},"ecosystem_specific":{"ubuntu_priority":"medium"}}]}`, Medium},
		{"bad vector", `{"id":"CVE-5","modified":"x","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/nonsense"}]}`, Unknown},
		{"none", `{"id":"GO-1","modified":"x"}`, Unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := parseOSV([]byte(tc.record))
			if err != nil {
				t.Fatal(err)
			}
			if v.Severity != tc.want {
				t.Errorf("severity %s, want %s", v.Severity, tc.want)
			}
		})
	}
}

func TestParseOSVRefuses(t *testing.T) {
	for _, in := range []string{`not json`, `{"foo":1}`, `{"id":"X"}`, `[1,2]`, `{"id":5,"modified":"x"}`} {
		if _, err := parseOSVFile([]byte(in)); err == nil || !strings.Contains(err.Error(), "OSV") {
			t.Errorf("parseOSVFile(%q) = %v, want an error that says it is not OSV", in, err)
		}
	}
}

func TestGoStdlibVersion(t *testing.T) {
	for in, want := range map[string]string{
		"go1.22.3": "1.22.3", "go1.21": "1.21.0", "go1.23rc1": "1.23.0-rc.1", "go1.22.0 X:boringcrypto": "1.22.0",
		"devel go1.24-abc": "", "go1.26.0": "1.26.0", "": "",
	} {
		if got := goStdlibVersion(in); got != want {
			t.Errorf("goStdlibVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestGate(t *testing.T) {
	var r Report
	r.Image = "trainer:1"
	for i := range 12 {
		r.Findings = append(r.Findings, Finding{ID: "GO-" + string(rune('A'+i)), Aliases: []string{"CVE-2024-" + string(rune('A'+i))},
			Severity: Critical, Package: "stdlib", Version: "1.22.0", Fixed: "1.22.5"})
	}
	r.Findings = append(r.Findings, Finding{ID: "GO-M", Severity: Medium, Package: "m", Version: "v1.0.0"})
	err := Gate(r, High)
	if err == nil {
		t.Fatal("Gate passed 12 critical findings at threshold HIGH")
	}
	msg := err.Error()
	for _, want := range []string{"image trainer:1 has known vulnerabilities (12 of severity HIGH or higher)", "GO-A (CVE-2024-A) CRITICAL in stdlib 1.22.0 (fixed in 1.22.5)",
		"and 2 more", "--deny-image-severity none", "Rebuild the image"} {
		if !strings.Contains(msg, want) {
			t.Errorf("gate error lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "GO-L") || strings.Contains(msg, "GO-M") {
		t.Errorf("gate error names more than 10 findings, or one below the threshold:\n%s", msg)
	}
	high := Report{Image: "x", Findings: []Finding{{ID: "H", Severity: High}}}
	if err := Gate(high, Medium); err == nil || !strings.Contains(err.Error(), "--deny-image-severity critical (or none)") {
		t.Errorf("gate of a HIGH finding does not say which threshold lets it through: %v", err)
	}
	if err := Gate(r, Unknown); err != nil {
		t.Errorf("threshold none refused: %v", err)
	}
	if err := Gate(Report{Findings: []Finding{{ID: "X", Severity: High}, {ID: "Y", Severity: Unknown}}}, Critical); err != nil {
		t.Errorf("HIGH and UNKNOWN findings refused at CRITICAL: %v", err)
	}
	for in, want := range map[string]Severity{"critical": Critical, "HIGH": High, "medium": Medium, "low": Low, "none": Unknown} {
		if got, err := ParseThreshold(in); err != nil || got != want {
			t.Errorf("ParseThreshold(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseThreshold("severe"); err == nil {
		t.Error("ParseThreshold accepted severe")
	}
}

func FuzzParseOSV(f *testing.F) {
	f.Add([]byte(`{"id":"GO-1","modified":"x","affected":[{"package":{"ecosystem":"Go","name":"m"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.0.0"}]}]}]}`))
	f.Add([]byte(`[{"id":"A","modified":"x","withdrawn":"y"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := parseOSVFile(b)
		if err != nil {
			return
		}
		for _, r := range recs {
			for _, a := range r.vuln.Affected {
				a.affects("1.0.0")
				a.affects("v1.0.0")
			}
		}
	})
}

func FuzzStanzas(f *testing.F) {
	f.Add([]byte("Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, st := range stanzas(b, ":") {
			for k := range st {
				if strings.Contains(k, "\n") {
					t.Fatalf("key %q spans lines", k)
				}
			}
		}
	})
}
