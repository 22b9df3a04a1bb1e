package scan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"convoy/internal/images"
)

// Report is the result of scanning one image.
type Report struct {
	Image    string    `json:"image"`
	Digest   string    `json:"digest"`
	OS       string    `json:"os,omitempty"`
	Scanned  time.Time `json:"scanned"`
	Packages int       `json:"packages"` // distinct packages found
	// Skipped counts packages of ecosystems convoy cannot match (dpkg on
	// Ubuntu, an unknown OS, a Go main module built without a version).
	Skipped  int          `json:"skipped"`
	Database DatabaseInfo `json:"database"`
	Findings []Finding    `json:"findings"`
}

// DatabaseInfo names the database a report was made with.
type DatabaseInfo struct {
	Version  string    `json:"version"`
	Imported time.Time `json:"imported"`
	Records  int       `json:"records"`
	NVDCVEs  int       `json:"nvd_cves"` // CVEs NVD's imported files rate
}

// Severity sources: where a finding's severity came from.
const (
	SourceRecord = "record" // the OSV record's own rating
	SourceNVD    = "nvd"    // NVD's rating of one of the record's CVEs
)

// Finding is one vulnerability of one installed package.
type Finding struct {
	Package   string   `json:"package"`
	Ecosystem string   `json:"ecosystem"`
	Version   string   `json:"installed_version"`
	Location  string   `json:"location"`
	ID        string   `json:"id"`
	Aliases   []string `json:"aliases,omitempty"`
	CVEs      []string `json:"cves,omitempty"`
	Severity  Severity `json:"severity"`
	// SeveritySource says where Severity came from, so that an auditor can
	// trace it: SourceRecord, SourceNVD (NVD then names the CVE, score and
	// CVSS version), or "" when UNKNOWN.
	SeveritySource string     `json:"severity_source,omitempty"`
	NVD            *NVDRating `json:"nvd,omitempty"`
	Fixed          string     `json:"fixed_version,omitempty"`
	Summary        string     `json:"summary,omitempty"`
}

// cve is the CVE a finding is best known by: the one NVD rated, else the
// record's first.
func (f Finding) cve() string {
	if f.NVD != nil {
		return f.NVD.CVE
	}
	if len(f.CVEs) > 0 {
		return f.CVEs[0]
	}
	return firstCVE(f.Aliases)
}

// severityOf decides a record's severity when a report is made (so that
// the order in which OSV and NVD files were imported does not matter): the
// record's own rating; else the highest NVD rating of its CVEs (the higher
// score, then the first CVE, breaking ties); else Unknown.
func (db *DB) severityOf(v *Vuln) (Severity, string, *NVDRating) {
	if v.Severity != Unknown {
		return v.Severity, SourceRecord, nil
	}
	var best *NVDRating
	for _, cve := range v.cves() {
		r := db.NVD[cve]
		if r == nil {
			continue
		}
		if best == nil || r.Severity > best.Severity || (r.Severity == best.Severity && r.Score > best.Score) {
			rated := *r
			rated.CVE = cve
			best = &rated
		}
	}
	if best == nil {
		return Unknown, "", nil
	}
	return best.Severity, SourceNVD, best
}

// Scan matches inv against db.
func Scan(db *DB, inv Inventory) Report {
	r := Report{OS: inv.OS, Scanned: time.Now().UTC(), Findings: []Finding{},
		Database: DatabaseInfo{Version: db.Version, Imported: db.Imported, Records: db.Records, NVDCVEs: len(db.NVD)}}
	seen := map[string]bool{}
	for _, p := range inv.Packages {
		key := p.Ecosystem + "\x00" + p.Name + "\x00" + p.Version
		if seen[key] {
			continue
		}
		seen[key] = true
		r.Packages++
		if !supportedEcosystem(p.Ecosystem) || (isGo(p.Ecosystem) && !validGoVersion(p.Version)) {
			r.Skipped++
			continue
		}
		for _, v := range db.lookup(p.Ecosystem, p.Name) {
			for _, a := range v.Affected {
				if a.Ecosystem != p.Ecosystem || indexKey(a.Ecosystem, a.Name) != indexKey(p.Ecosystem, p.Name) {
					continue
				}
				hit, fixed := a.affects(p.Version)
				if !hit {
					continue
				}
				sev, source, nvd := db.severityOf(v)
				r.Findings = append(r.Findings, Finding{Package: p.Name, Ecosystem: p.Ecosystem, Version: p.Version, Location: p.Location,
					ID: v.ID, Aliases: v.Aliases, CVEs: v.cves(), Severity: sev, SeveritySource: source, NVD: nvd, Fixed: fixed, Summary: v.Summary})
				break
			}
		}
	}
	slices.SortStableFunc(r.Findings, func(a, b Finding) int {
		if a.Severity != b.Severity {
			return int(b.Severity - a.Severity)
		}
		return strings.Compare(a.Package+"\x00"+a.ID, b.Package+"\x00"+b.ID)
	})
	return r
}

func validGoVersion(v string) bool { _, err := compareSemver(v, v); return err == nil }

// ScanImage takes the inventory of img's root filesystem and matches it.
func ScanImage(db *DB, img images.Image, rootfs string) (Report, error) {
	inv, err := TakeInventory(rootfs)
	if err != nil {
		return Report{}, fmt.Errorf("scan image %s: %w", img.Ref, err)
	}
	r := Scan(db, inv)
	r.Image, r.Digest = img.Ref, img.Digest
	return r, nil
}

// AtOrAbove returns the findings of severity threshold or higher; none for
// Unknown.
func (r Report) AtOrAbove(threshold Severity) []Finding {
	if threshold <= Unknown {
		return nil
	}
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity >= threshold {
			out = append(out, f)
		}
	}
	return out
}

// GateError is Gate's refusal.
type GateError struct {
	Image     string
	Threshold Severity
	Findings  []Finding
}

// maxNamed is how many findings a GateError names.
const maxNamed = 10

// Error names the remedy before the findings, so that a reason cut to
// SageMaker's 1,024 characters still says what to do.
func (e *GateError) Error() string {
	var b strings.Builder
	worst := e.Threshold
	for _, f := range e.Findings {
		worst = max(worst, f.Severity)
	}
	accept := "--deny-image-severity none"
	if worst < Critical {
		accept = fmt.Sprintf("--deny-image-severity %s (or none)", strings.ToLower((worst + 1).String()))
	}
	fmt.Fprintf(&b, "image %s has known vulnerabilities (%d of severity %s or higher). "+
		"Rebuild the image with the fixed packages and import it again; or, to accept the risk, restart convoy up with %s; "+
		"`convoy images scan %s` lists them: ", e.Image, len(e.Findings), e.Threshold, accept, e.Image)
	for i, f := range e.Findings {
		if i == maxNamed {
			fmt.Fprintf(&b, ", and %d more", len(e.Findings)-maxNamed)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.ID)
		if cve := f.cve(); cve != "" && cve != f.ID {
			b.WriteString(" (" + cve + ")")
		}
		b.WriteString(" " + f.Severity.String())
		if f.SeveritySource == SourceNVD {
			b.WriteString(" (rated by NVD)")
		}
		fmt.Fprintf(&b, " in %s %s", f.Package, f.Version)
		if f.Fixed != "" {
			fmt.Fprintf(&b, " (fixed in %s)", f.Fixed)
		}
	}
	return b.String()
}

func firstCVE(aliases []string) string {
	for _, a := range aliases {
		if strings.HasPrefix(a, "CVE-") {
			return a
		}
	}
	return ""
}

// Gate refuses a report with findings of severity threshold or higher
// (*GateError); threshold Unknown refuses nothing.
func Gate(r Report, threshold Severity) error {
	if fs := r.AtOrAbove(threshold); len(fs) > 0 {
		return &GateError{Image: r.Image, Threshold: threshold, Findings: fs}
	}
	return nil
}

// ParseThreshold reads a gate threshold: critical, high, medium, low, or
// none (Unknown: refuse nothing).
func ParseThreshold(s string) (Severity, error) {
	if strings.EqualFold(s, "none") {
		return Unknown, nil
	}
	v, err := ParseSeverity(s)
	if err != nil || v == Unknown {
		return Unknown, fmt.Errorf("severity %q: choose critical, high, medium, low or none", s)
	}
	return v, nil
}

// WriteTable writes a report for people: a summary, then one line per finding.
func WriteTable(w io.Writer, r Report) error {
	fmt.Fprintf(w, "image %s (%s)\n", r.Image, r.Digest)
	osName := r.OS
	if osName == "" {
		osName = "unknown"
	}
	fmt.Fprintf(w, "os %s, %d packages scanned (%d skipped: an ecosystem or version convoy cannot match)\n", osName, r.Packages, r.Skipped)
	fmt.Fprintf(w, "database imported %s, %d records, NVD ratings of %d CVEs\n", r.Database.Imported.Format(time.RFC3339), r.Database.Records, r.Database.NVDCVEs)
	if len(r.Findings) == 0 {
		_, err := fmt.Fprintln(w, "no known vulnerabilities")
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tID\tCVE\tPACKAGE\tINSTALLED\tFIXED\tWHERE")
	fromNVD := false
	for _, f := range r.Findings {
		fixed := f.Fixed
		if fixed == "" {
			fixed = "-"
		}
		cve := f.cve()
		if cve == "" {
			cve = "-"
		}
		sev := f.Severity.String()
		if f.SeveritySource == SourceNVD {
			sev += "*"
			fromNVD = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sev, f.ID, cve, f.Package, f.Version, fixed, f.Location)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if fromNVD {
		_, err := fmt.Fprintln(w, "\n* rated by NVD: the record states no severity, so it is NVD's rating of the CVE shown (--json gives the score and CVSS version)")
		return err
	}
	return nil
}

// Scanner is the deploy gate of a running convoy: it scans images against
// the database in DataDir, caches reports per (image digest, database
// version), and refuses images with findings at or above Threshold. The
// database is read again when `convoy vulndb import` has replaced it, so
// an import takes effect without a restart.
type Scanner struct {
	DataDir   string
	Threshold Severity
	Log       *slog.Logger

	mu      sync.Mutex
	db      *DB
	dbStamp string
	cache   map[string]Report
}

// maxCached bounds the reports a Scanner keeps.
const maxCached = 512

// Database returns the current database, reading it again if it changed on
// disk; ErrNoDatabase (wrapped) when none is imported.
func (s *Scanner) Database() (*DB, error) {
	fi, err := os.Stat(dbPath(s.DataDir))
	if err != nil {
		return Load(s.DataDir) // the error that says how to import one
	}
	stamp := fmt.Sprint(fi.ModTime().UnixNano(), fi.Size())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db != nil && s.dbStamp == stamp {
		return s.db, nil
	}
	db, err := Load(s.DataDir)
	if err != nil {
		return nil, err
	}
	s.db, s.dbStamp, s.cache = db, stamp, map[string]Report{}
	if s.Log != nil {
		s.Log.Info("vulnerability database loaded", "records", db.Records, "nvd_cves", len(db.NVD), "imported", db.Imported)
	}
	return db, nil
}

// Report scans img (unpacked at rootfs), or returns the cached report.
func (s *Scanner) Report(img images.Image, rootfs string) (Report, error) {
	db, err := s.Database()
	if err != nil {
		return Report{}, err
	}
	key := img.Digest + "@" + db.Version
	s.mu.Lock()
	r, ok := s.cache[key]
	s.mu.Unlock()
	if ok {
		r.Image = img.Ref
		return r, nil
	}
	r, err = ScanImage(db, img, rootfs)
	if err != nil {
		return Report{}, err
	}
	s.mu.Lock()
	if s.db == db {
		if len(s.cache) >= maxCached {
			clear(s.cache)
		}
		s.cache[key] = r
	}
	s.mu.Unlock()
	if s.Log != nil {
		s.Log.Info("image scanned", "image", img.Ref, "digest", img.Digest, "packages", r.Packages, "findings", len(r.Findings))
	}
	return r, nil
}

// CheckImage is the gate: nil when img may run. Without a database, or with
// Threshold Unknown (none), every image may; one that cannot be scanned (a
// damaged database, an unreadable root filesystem) may not.
func (s *Scanner) CheckImage(ctx context.Context, img images.Image, rootfs string) error {
	if s.Threshold <= Unknown {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err := s.Report(img, rootfs)
	if errors.Is(err, ErrNoDatabase) {
		return nil // said once at start (StartupWarning)
	}
	if err != nil {
		// Fail closed: an image that cannot be scanned is not known to be
		// safe.
		return fmt.Errorf("image %s could not be scanned for known vulnerabilities, and convoy refuses images it cannot scan "+
			"(--deny-image-severity %s): %w", img.Ref, strings.ToLower(s.Threshold.String()), err)
	}
	return Gate(r, s.Threshold)
}

// StartupWarning logs, once, what the gate does: that images are not
// scanned when there is no database, or the threshold.
func (s *Scanner) StartupWarning() {
	if s.Log == nil {
		return
	}
	if s.Threshold <= Unknown {
		s.Log.Warn("images are not checked for known vulnerabilities: --deny-image-severity is none")
		return
	}
	db, err := s.Database()
	if err != nil {
		s.Log.Warn("images are not being scanned for known vulnerabilities until a database is imported; import one with `convoy vulndb import --data DATA FILE…` (it takes effect without a restart)", "err", err)
		return
	}
	s.Log.Info("images are scanned before they run", "deny_severity", s.Threshold.String(), "database_records", db.Records, "database_imported", db.Imported)
}
