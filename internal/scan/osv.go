package scan

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	gocvss30 "github.com/pandatix/go-cvss/30"
	gocvss31 "github.com/pandatix/go-cvss/31"
	gocvss40 "github.com/pandatix/go-cvss/40"
)

// Severity is a finding's severity, NVD's qualitative rating.
type Severity int

// Severities, in order. Unknown is below Low: a record that states no
// severity never reaches a Gate threshold, but is reported.
const (
	Unknown Severity = iota
	Low
	Medium
	High
	Critical
)

var severityNames = []string{"UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL"}

func (s Severity) String() string {
	if s < 0 || int(s) >= len(severityNames) {
		return "UNKNOWN"
	}
	return severityNames[s]
}

// MarshalText writes the name (CRITICAL …).
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a name as ParseSeverity does.
func (s *Severity) UnmarshalText(b []byte) error {
	v, err := ParseSeverity(string(b))
	*s = v
	return err
}

// ParseSeverity reads LOW, MEDIUM (or GHSA's MODERATE), HIGH, CRITICAL or
// UNKNOWN, in any case.
func ParseSeverity(s string) (Severity, error) {
	switch strings.ToUpper(strings.TrimSpace(s)) {
	case "LOW":
		return Low, nil
	case "MEDIUM", "MODERATE":
		return Medium, nil
	case "HIGH":
		return High, nil
	case "CRITICAL":
		return Critical, nil
	case "UNKNOWN", "":
		return Unknown, nil
	}
	return Unknown, fmt.Errorf("unknown severity %q: use low, medium, high or critical", s)
}

// severityOfScore is NVD's rating of a CVSS base score.
func severityOfScore(score float64) Severity {
	switch {
	case score >= 9.0:
		return Critical
	case score >= 7.0:
		return High
	case score >= 4.0:
		return Medium
	case score > 0:
		return Low
	}
	return Unknown
}

// osvRecord is the part of an OSV record convoy reads.
type osvRecord struct {
	ID               string          `json:"id"`
	Modified         string          `json:"modified"`
	Withdrawn        string          `json:"withdrawn"`
	Aliases          []string        `json:"aliases"`
	Upstream         []string        `json:"upstream"`
	Summary          string          `json:"summary"`
	Severity         []osvSeverity   `json:"severity"`
	Affected         []osvAffected   `json:"affected"`
	DatabaseSpecific json.RawMessage `json:"database_specific"`
}

type osvSeverity struct {
	Type  string `json:"type"`
	Score string `json:"score"`
}

type osvAffected struct {
	Package struct {
		Ecosystem string `json:"ecosystem"`
		Name      string `json:"name"`
	} `json:"package"`
	Severity []osvSeverity `json:"severity"`
	Ranges   []Range       `json:"ranges"`
	Versions []string      `json:"versions"`
	// EcosystemSpecific carries Canonical's rating of an Ubuntu record:
	// {"ubuntu_priority": "medium"}.
	EcosystemSpecific struct {
		UbuntuPriority string `json:"ubuntu_priority"`
	} `json:"ecosystem_specific"`
}

// Range is an OSV affected range: events in version order.
type Range struct {
	Type   string  `json:"type"`
	Events []Event `json:"events"`
}

// Event is one OSV range event; exactly one field is set.
type Event struct {
	Introduced   string `json:"introduced,omitempty"`
	Fixed        string `json:"fixed,omitempty"`
	LastAffected string `json:"last_affected,omitempty"`
	Limit        string `json:"limit,omitempty"`
}

// Vuln is an OSV record as the database keeps it: what matching and
// reporting need, with the record's own severity decided at import.
type Vuln struct {
	ID      string   `json:"id"`
	Aliases []string `json:"aliases,omitempty"`
	// CVEs are the CVE ids the record stands for (cveIDs), for NVD's
	// rating when the record states no severity. Records imported before
	// convoy kept them have none: cves derives them from ID and Aliases.
	CVEs     []string   `json:"cves,omitempty"`
	Summary  string     `json:"summary,omitempty"`
	Severity Severity   `json:"severity"`
	Affected []Affected `json:"affected"`
}

// cves returns the CVE ids v stands for.
func (v *Vuln) cves() []string {
	if v.CVEs != nil {
		return v.CVEs
	}
	return cveIDs(v.ID, v.Aliases, nil)
}

// Affected is one package a Vuln affects.
type Affected struct {
	Ecosystem string   `json:"ecosystem"`
	Name      string   `json:"name"`
	Ranges    []Range  `json:"ranges,omitempty"`
	Versions  []string `json:"versions,omitempty"`
}

// errWithdrawn marks a record that was withdrawn: imported as nothing.
var errWithdrawn = errors.New("withdrawn")

// parseOSV reads one OSV record. A file that is not JSON, or JSON that is
// not an OSV record, is an error that says so.
func parseOSV(data []byte) (Vuln, error) {
	var r osvRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return Vuln{}, fmt.Errorf("not an OSV JSON record: %w", err)
	}
	if r.ID == "" || r.Modified == "" {
		return Vuln{}, errors.New(`not an OSV record: it has no "id" or no "modified" field`)
	}
	if r.Withdrawn != "" {
		return Vuln{}, errWithdrawn
	}
	v := Vuln{ID: r.ID, Aliases: r.Aliases, CVEs: cveIDs(r.ID, r.Aliases, r.Upstream), Summary: truncate(r.Summary, 200)}
	v.Severity = recordSeverity(r.DatabaseSpecific, r.Severity)
	for _, a := range r.Affected {
		if a.Package.Ecosystem == "" || a.Package.Name == "" {
			continue
		}
		if v.Severity == Unknown {
			v.Severity = max(v.Severity, cvssSeverity(a.Severity), ubuntuPriority(a.EcosystemSpecific.UbuntuPriority))
		}
		v.Affected = append(v.Affected, Affected{Ecosystem: a.Package.Ecosystem, Name: a.Package.Name, Ranges: a.Ranges, Versions: a.Versions})
	}
	return v, nil
}

// recordSeverity: database_specific.severity (GHSA's rating) when the record
// has one, else the highest CVSS base score's rating, else Unknown.
func recordSeverity(dbSpecific json.RawMessage, sev []osvSeverity) Severity {
	var ds struct {
		Severity any `json:"severity"`
	}
	if len(dbSpecific) > 0 && json.Unmarshal(dbSpecific, &ds) == nil {
		if s, ok := ds.Severity.(string); ok {
			if v, err := ParseSeverity(s); err == nil && v != Unknown {
				return v
			}
		}
	}
	return cvssSeverity(sev)
}

func cvssSeverity(sev []osvSeverity) Severity {
	best := Unknown
	for _, s := range sev {
		var score float64
		switch {
		case s.Type == "CVSS_V3" && strings.HasPrefix(s.Score, "CVSS:3.1/"):
			if c, err := gocvss31.ParseVector(s.Score); err == nil {
				score = c.BaseScore()
			}
		case s.Type == "CVSS_V3" && strings.HasPrefix(s.Score, "CVSS:3.0/"):
			if c, err := gocvss30.ParseVector(s.Score); err == nil {
				score = c.BaseScore()
			}
		case s.Type == "Ubuntu":
			// Canonical's priority (negligible … critical), not a score.
			best = max(best, ubuntuPriority(s.Score))
			continue
		case s.Type == "CVSS_V4":
			if c, err := gocvss40.ParseVector(s.Score); err == nil {
				score = c.Score()
			}
		}
		best = max(best, severityOfScore(score))
	}
	return best
}

// ubuntuPriority reads Canonical's priority of an Ubuntu record: negligible
// counts as low; untriaged or anything else as unknown.
func ubuntuPriority(p string) Severity {
	if strings.EqualFold(strings.TrimSpace(p), "negligible") {
		return Low
	}
	if v, err := ParseSeverity(p); err == nil {
		return v
	}
	return Unknown
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// affects tells whether version of the package is affected, and the first
// fixed version above it if the record names one.
func (a Affected) affects(version string) (bool, string) {
	if slices.Contains(a.Versions, version) || (isGo(a.Ecosystem) && slices.ContainsFunc(a.Versions, func(v string) bool {
		return sameGoVersion(v, version)
	})) {
		return true, a.fixedAfter(version)
	}
	for _, r := range a.Ranges {
		cmp := comparator(a.Ecosystem, r.Type)
		if cmp == nil {
			continue
		}
		if hit, fixed := inRange(cmp, r.Events, version); hit {
			return true, fixed
		}
	}
	return false, ""
}

func (a Affected) fixedAfter(version string) string {
	for _, r := range a.Ranges {
		if cmp := comparator(a.Ecosystem, r.Type); cmp != nil {
			if _, fixed := inRange(cmp, r.Events, version); fixed != "" {
				return fixed
			}
		}
	}
	return ""
}

// inRange evaluates one OSV range as the schema describes: with the events
// sorted by version, version is affected after an introduced at or below it
// until a fixed at or below it, or a last_affected below it. A version (or
// event) the comparator cannot read makes the range not match rather than
// guess.
func inRange(cmp compareFunc, events []Event, version string) (bool, string) {
	type ev struct {
		kind, v string
	}
	var evs []ev
	for _, e := range events {
		switch {
		case e.Introduced != "":
			evs = append(evs, ev{"introduced", e.Introduced})
		case e.Fixed != "":
			evs = append(evs, ev{"fixed", e.Fixed})
		case e.LastAffected != "":
			evs = append(evs, ev{"last_affected", e.LastAffected})
		case e.Limit != "":
			evs = append(evs, ev{"limit", e.Limit})
		}
	}
	bad := false
	order := func(x, y string) int {
		if x == y {
			return 0
		}
		if x == "0" {
			return -1
		}
		if y == "0" {
			return 1
		}
		c, err := cmp(x, y)
		if err != nil {
			bad = true
		}
		return c
	}
	slices.SortStableFunc(evs, func(x, y ev) int { return order(x.v, y.v) })
	affected, fixed := false, ""
	for _, e := range evs {
		c := order(version, e.v)
		switch e.kind {
		case "introduced":
			if c >= 0 {
				affected = true
			}
		case "fixed":
			if c >= 0 {
				affected = false
			} else if affected && fixed == "" {
				fixed = e.v
			}
		case "last_affected":
			if c > 0 {
				affected = false
			}
		case "limit":
			if c >= 0 {
				affected = false
			}
		}
		if c < 0 && !affected {
			break // later events are above the version
		}
	}
	if bad {
		return false, ""
	}
	if !affected {
		fixed = ""
	}
	return affected, fixed
}
