package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"convoy/internal/daemon"
	"convoy/internal/scan"
)

func vulndbCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "vulndb",
		Short: "Manage the vulnerability database that images are scanned against",
		Long: `convoy scans images for known vulnerabilities (CVEs) against a database in
DATA/vulndb that you import; it downloads nothing. The database is in the
open OSV format (https://ossf.github.io/osv-schema/): osv.dev publishes one
all.zip per ecosystem, e.g.

  https://osv-vulnerabilities.storage.googleapis.com/Debian/all.zip
  https://osv-vulnerabilities.storage.googleapis.com/Go/all.zip
  https://osv-vulnerabilities.storage.googleapis.com/Alpine/all.zip
  https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip

Debian's records state no severity: without more, their findings are
UNKNOWN and never reach --deny-image-severity. The National Vulnerability
Database (NVD) rates CVEs; import its JSON feeds too, one per year of CVE
ids (2002 holds the older ones), and such a finding takes NVD's rating of
its CVE:

  https://nvd.nist.gov/feeds/json/cve/2.0/nvdcve-2.0-2024.json.gz
  (and nvdcve-2.0-2002.json.gz … up to this year's;
  https://nvd.nist.gov/vuln/data-feeds lists them)

Responses of the NVD CVE API 2.0 (https://services.nvd.nist.gov/rest/json/cves/2.0,
saved as .json files) and the retired 1.1 feeds (nvdcve-1.1-YYYY.json.gz)
are read as well.

Fetch the files on a connected machine, carry them over (e.g. on removable
media), and import them; import the NVD feeds again when you refresh the OSV
files. convoy matches Debian and Alpine packages, Go binaries (their modules
and the Go standard library) and Python packages.

convoy up refuses images whose findings reach --deny-image-severity
(critical by default); a running convoy uses a new import without a restart.`,
		Example: `  convoy vulndb import Debian-all.zip Go-all.zip
  convoy vulndb import nvd/          # nvdcve-2.0-2002.json.gz … nvdcve-2.0-2025.json.gz
  convoy vulndb status
  convoy images scan trainer:1`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data", daemon.DefaultDataDir(), "convoy's data directory (as for convoy up)")

	importCmd := &cobra.Command{
		Use:   "import FILE…",
		Short: "Import OSV records and NVD CVE ratings: .json(.gz) files, directories of them, or zip files",
		Long: `Import OSV vulnerability records and NVD's ratings of CVEs into DATA/vulndb,
adding to what is there: a record replaces an earlier one with the same id,
and a withdrawn record removes it; an NVD rating replaces an earlier rating
of the same CVE, and a CVE NVD rejected loses its rating.

A FILE is an OSV record (or a JSON array of them), an NVD file, a directory
of .json and .json.gz files (searched recursively), or a zip file of them
(osv.dev's all.zip). OSV and NVD files are told apart by their content, not
their names, and gzip-compressed files are read as they are.

NVD files: NVD's JSON 2.0 feeds (https://nvd.nist.gov/feeds/json/cve/2.0/nvdcve-2.0-2024.json.gz,
one per year), responses of the CVE API 2.0 (https://services.nvd.nist.gov/rest/json/cves/2.0)
saved to a file, or the retired 1.1 feeds (nvdcve-1.1-2023.json.gz). Debian's
OSV records state no severity, so Debian findings need them for one: a
finding whose record states no severity takes the highest NVD rating of its
CVEs (NVD's own "Primary" CVSS metric before a CNA's, v3.1 first, then v4.0,
v3.0, v2), and reports say so. Fetch them where there is internet and carry
them to the offline machine with the OSV files; the order of imports does
not matter.

Every file is read before anything is written, and the database is replaced
in one step: a file that is neither OSV nor NVD JSON, a zip entry that would
escape its directory (zip slip), an OSV record over 16 MiB or a file that
decompresses to more than 1 GiB fails the whole import and leaves the
database as it was.`,
		Example: `  convoy vulndb import Debian-all.zip nvdcve-2.0-2024.json.gz nvdcve-2.0-2025.json.gz
  convoy vulndb import ./osv-records/ GHSA-xxxx-xxxx-xxxx.json
  convoy vulndb import ./nvd-feeds/`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := scan.Import(dataDir, args...)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, eco := range slices.Sorted(maps.Keys(res.Ecosystems)) {
				fmt.Fprintf(out, "%-24s %d records\n", eco, res.Ecosystems[eco])
			}
			if res.NVDFiles > 0 {
				fmt.Fprintf(out, "%-24s %d CVEs (%d rejected by NVD ignored)\n", "NVD", res.NVD, res.NVDRejected)
			}
			fmt.Fprintf(out, "imported %d records (%d withdrawn ignored); the database now holds %d, and NVD ratings of %d CVEs\n",
				res.Imported, res.Withdrawn, res.DB.Records, len(res.DB.NVD))
			debian := slices.ContainsFunc(slices.Collect(maps.Keys(res.DB.Ecosystems)), func(eco string) bool { return strings.HasPrefix(eco, "Debian") })
			if debian && len(res.DB.NVD) == 0 {
				fmt.Fprintln(out, "note: Debian's records state no severity; import NVD's feeds too (convoy vulndb import --help), or Debian findings stay UNKNOWN and never reach --deny-image-severity")
			}
			return nil
		},
	}
	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show when the database was imported and what it holds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := scan.Load(dataDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "imported %s (%s ago), %d records\n", db.Imported.Format(time.RFC3339), time.Since(db.Imported).Round(time.Minute), db.Records)
			for _, eco := range slices.Sorted(maps.Keys(db.Ecosystems)) {
				fmt.Fprintf(out, "%-24s %d records\n", eco, db.Ecosystems[eco])
			}
			if db.NVDImported.IsZero() {
				fmt.Fprintf(out, "%-24s none imported: findings whose record states no severity (Debian's) are UNKNOWN\n", "NVD")
			} else {
				fmt.Fprintf(out, "%-24s %d CVEs, imported %s (%s ago)\n", "NVD", len(db.NVD), db.NVDImported.Format(time.RFC3339), time.Since(db.NVDImported).Round(time.Minute))
			}
			return nil
		},
	}
	cmd.AddCommand(importCmd, statusCmd)
	return cmd
}
