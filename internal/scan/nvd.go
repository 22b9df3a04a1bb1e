package scan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// NVD enrichment. Some OSV sources state no severity (osv.dev's Debian
// records: DEBIAN-CVE-…, DSA-…, DLA-…), so their findings would be UNKNOWN
// and never reach the deploy gate. NVD rates every analysed CVE; the
// operator imports NVD's JSON files beside the OSV files, and a finding
// whose record states no severity takes NVD's rating of its CVEs (decided
// at report time, so the order of imports does not matter).
//
// Written by hand: the subset of the NVD CVE API 2.0 / 2.0 feed schema and
// of the legacy 1.1 feed schema that holds the rating. The files are large
// (a yearly 2.0 feed is ~150 MB of JSON), so they are read as a stream with
// json.Decoder's tokens and only CVE id → rating is kept.

// NVDRating is NVD's rating of one CVE: the base severity and score of the
// CVSS metric convoy chose (see decodeNVD20).
type NVDRating struct {
	// CVE is set in a Finding (which CVE the rating is of); in the
	// database's table the CVE id is the key.
	CVE      string   `json:"cve,omitempty"`
	Severity Severity `json:"severity"`
	Score    float64  `json:"score"`
	CVSS     string   `json:"cvss"` // CVSS version of the metric: 3.1, 4.0, 3.0 or 2.0
}

// maxNVDSize bounds what one NVD file may decompress to (and what a zip
// entry may hold): NVD's largest yearly 2.0 feed is ~150 MB of JSON, the
// 1.1 feeds were smaller, so 1 GiB leaves room for years of growth while a
// gzip bomb (a few MB expanding to terabytes) stops early.
const maxNVDSize = 1 << 30

// maxJSONDepth bounds the nesting convoy follows while skipping the parts
// of an NVD file it does not read; NVD's own files nest less than 20 deep.
const maxJSONDepth = 1000

// isNVD tells whether prefix, the start of a JSON file, is an NVD file: a
// top-level object reaching a "vulnerabilities" (API 2.0, 2.0 feeds) or
// "CVE_Items" (1.1 feeds) key. NVD puts a few small header fields before
// that array, so a prefix of some kilobytes decides; an OSV record has
// neither key.
func isNVD(prefix []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(prefix))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return false
		}
		if k == "vulnerabilities" || k == "CVE_Items" {
			return true
		}
		if skipValue(dec) != nil {
			return false
		}
	}
	return false
}

// skipValue reads past one JSON value without keeping it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			if depth++; depth > maxJSONDepth {
				return fmt.Errorf("JSON nested more than %d deep", maxJSONDepth)
			}
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// parseNVD reads one NVD file from r into ratings: CVE id → rating, nil for
// a CVE NVD rejected (so that an import removes an earlier rating of it).
// CVEs NVD has not rated (no metrics yet) are left out. It returns how many
// CVEs it rated. r is read as a stream: only the ratings are kept.
func parseNVD(r io.Reader, ratings map[string]*NVDRating) (int, error) {
	dec := json.NewDecoder(&squeezeSpace{r: r})
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0, fmt.Errorf("not an NVD JSON file: it is not a JSON object (%v)", err)
	}
	rated, arrays := 0, 0
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return 0, fmt.Errorf("not an NVD JSON file: %w", err)
		}
		key, _ := t.(string)
		if key != "vulnerabilities" && key != "CVE_Items" {
			if err := skipValue(dec); err != nil {
				return 0, fmt.Errorf("not an NVD JSON file: %q: %w", key, err)
			}
			continue
		}
		arrays++
		if t, err := dec.Token(); err != nil || t != json.Delim('[') {
			return 0, fmt.Errorf("not an NVD JSON file: %q is not an array (%v)", key, err)
		}
		for i := 0; dec.More(); i++ {
			decode := decodeNVD20
			if key == "CVE_Items" {
				decode = decodeNVD11
			}
			id, rating, rejected, err := decode(dec)
			if err != nil {
				return 0, fmt.Errorf("not an NVD JSON file: %s[%d]: %w", key, i, err)
			}
			if rating == nil && !rejected {
				continue // not rated yet
			}
			ratings[id] = rating
			if rating != nil {
				rated++
			}
			if len(ratings) > maxJSONEntries {
				return 0, fmt.Errorf("more than %d CVEs: refusing an input this large", maxJSONEntries)
			}
		}
		if _, err := dec.Token(); err != nil { // ]
			return 0, fmt.Errorf("not an NVD JSON file: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // }
		return 0, fmt.Errorf("not an NVD JSON file: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, fmt.Errorf("not an NVD JSON file: data after the top-level object (%v)", err)
	}
	if arrays == 0 {
		return 0, errors.New(`not an NVD JSON file: it has no "vulnerabilities" (NVD 2.0) or "CVE_Items" (NVD 1.1) array`)
	}
	return rated, nil
}

// nvdMetric is one CVSS metric of an NVD 2.0 record. v3.x and v4.0 carry
// the rating in cvssData.baseSeverity; v2 in the metric's own baseSeverity.
type nvdMetric struct {
	Type         string `json:"type"` // Primary (NVD's own) or Secondary (the CNA's)
	BaseSeverity string `json:"baseSeverity"`
	CVSSData     struct {
		BaseScore    float64 `json:"baseScore"`
		BaseSeverity string  `json:"baseSeverity"`
	} `json:"cvssData"`
}

// decodeNVD20 reads one element of an NVD 2.0 "vulnerabilities" array:
// the CVE id, NVD's rating (nil when it has none), and whether NVD rejected
// the CVE.
func decodeNVD20(dec *json.Decoder) (id string, r *NVDRating, rejected bool, err error) {
	var item struct {
		CVE struct {
			ID         string `json:"id"`
			VulnStatus string `json:"vulnStatus"`
			Metrics    struct {
				V40 []nvdMetric `json:"cvssMetricV40"`
				V31 []nvdMetric `json:"cvssMetricV31"`
				V30 []nvdMetric `json:"cvssMetricV30"`
				V2  []nvdMetric `json:"cvssMetricV2"`
			} `json:"metrics"`
		} `json:"cve"`
	}
	if err := dec.Decode(&item); err != nil {
		return "", nil, false, err
	}
	c := item.CVE
	if !validCVE(c.ID) {
		return "", nil, false, fmt.Errorf("cve.id %q is not a CVE id", c.ID)
	}
	if strings.EqualFold(c.VulnStatus, "Rejected") {
		return c.ID, nil, true, nil
	}
	// Primary (NVD's own analysis) before Secondary (the CNA's); within a
	// type, v3.1 first (NVD's primary scores are v3.1 for most records),
	// then v4.0, v3.0, v2.
	for _, primary := range []bool{true, false} {
		for _, m := range []struct {
			version string
			metrics []nvdMetric
		}{{"3.1", c.Metrics.V31}, {"4.0", c.Metrics.V40}, {"3.0", c.Metrics.V30}, {"2.0", c.Metrics.V2}} {
			for _, x := range m.metrics {
				if (x.Type == "Primary") != primary {
					continue
				}
				sev := x.CVSSData.BaseSeverity
				if m.version == "2.0" {
					sev = x.BaseSeverity
				}
				if r := rating(sev, x.CVSSData.BaseScore, m.version); r != nil {
					return c.ID, r, false, nil
				}
			}
		}
	}
	return c.ID, nil, false, nil
}

// decodeNVD11 reads one element of a legacy NVD 1.1 feed's "CVE_Items", as
// decodeNVD20 does. The 1.1 feeds mark no rejection but for the text of
// the description; a rejected CVE has no metrics, so it is left out.
func decodeNVD11(dec *json.Decoder) (id string, r *NVDRating, rejected bool, err error) {
	var item struct {
		CVE struct {
			Meta struct {
				ID string `json:"ID"`
			} `json:"CVE_data_meta"`
		} `json:"cve"`
		Impact struct {
			V3 struct {
				CVSS struct {
					Version      string  `json:"version"`
					BaseScore    float64 `json:"baseScore"`
					BaseSeverity string  `json:"baseSeverity"`
				} `json:"cvssV3"`
			} `json:"baseMetricV3"`
			V2 struct {
				Severity string `json:"severity"`
				CVSS     struct {
					BaseScore float64 `json:"baseScore"`
				} `json:"cvssV2"`
			} `json:"baseMetricV2"`
		} `json:"impact"`
	}
	if err := dec.Decode(&item); err != nil {
		return "", nil, false, err
	}
	id = item.CVE.Meta.ID
	if !validCVE(id) {
		return "", nil, false, fmt.Errorf("cve.CVE_data_meta.ID %q is not a CVE id", id)
	}
	v3 := item.Impact.V3.CVSS
	version := "3.1"
	if v3.Version == "3.0" {
		version = "3.0"
	}
	if r := rating(v3.BaseSeverity, v3.BaseScore, version); r != nil {
		return id, r, false, nil
	}
	v2 := item.Impact.V2
	return id, rating(v2.Severity, v2.CVSS.BaseScore, "2.0"), false, nil
}

// rating is a metric's rating: its stated severity, else its score's; nil
// when it has neither (or a score outside CVSS's 0–10).
func rating(severity string, score float64, version string) *NVDRating {
	if score < 0 || score > 10 {
		return nil
	}
	s, err := ParseSeverity(severity)
	if err != nil || s == Unknown {
		s = severityOfScore(score)
	}
	if s == Unknown {
		return nil // NONE (0.0) or no rating at all
	}
	return &NVDRating{Severity: s, Score: score, CVSS: version}
}

// validCVE accepts CVE-YYYY-NNNN… ids (and nothing long enough to bloat
// the database).
func validCVE(id string) bool {
	return strings.HasPrefix(id, "CVE-") && len(id) <= 32
}

// cveIDs lists the CVEs an OSV record stands for: its id when it is one,
// its aliases and upstream ids, and the CVE of a Debian or Ubuntu per-CVE
// record (DEBIAN-CVE-2024-1234, UBUNTU-CVE-2024-1234).
func cveIDs(id string, aliases, upstream []string) []string {
	var out []string
	for _, s := range append(append([]string{id}, aliases...), upstream...) {
		for _, p := range []string{"DEBIAN-", "UBUNTU-"} {
			if rest, ok := strings.CutPrefix(s, p); ok && strings.HasPrefix(rest, "CVE-") {
				s = rest
			}
		}
		if validCVE(s) && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// squeezeSpace collapses each run of JSON whitespace outside strings to
// its first byte, which JSON reads the same. json.Decoder scans a run of
// whitespace from its start again each time it reads more input, so a long
// run (a gzip bomb of spaces) would cost time quadratic in its length and
// a buffer as long; NVD's files have no such runs.
type squeezeSpace struct {
	r                        io.Reader
	inString, escaped, space bool
}

func (s *squeezeSpace) Read(p []byte) (int, error) {
	for {
		n, err := s.r.Read(p)
		w := 0
		for _, c := range p[:n] {
			isSpace := false
			switch {
			case s.inString:
				switch {
				case s.escaped:
					s.escaped = false
				case c == '\\':
					s.escaped = true
				case c == '"':
					s.inString = false
				}
			case c == ' ' || c == '\t' || c == '\n' || c == '\r':
				isSpace = true
			case c == '"':
				s.inString = true
			}
			if isSpace && s.space {
				continue
			}
			s.space = isSpace
			p[w] = c
			w++
		}
		if w > 0 || n == 0 || err != nil {
			return w, err
		}
	}
}
