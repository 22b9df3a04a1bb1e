package main

import (
	"fmt"
	"maps"
	"slices"
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

Fetch them on a connected machine, carry them over, and import them. convoy
matches Debian and Alpine packages, Go binaries (their modules and the Go
standard library) and Python packages.

convoy up refuses images whose findings reach --deny-image-severity
(critical by default); a running convoy uses a new import without a restart.`,
		Example: `  convoy vulndb import Debian-all.zip Go-all.zip
  convoy vulndb status
  convoy images scan trainer:1`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data", daemon.DefaultDataDir(), "convoy's data directory (as for convoy up)")

	importCmd := &cobra.Command{
		Use:   "import FILE…",
		Short: "Import OSV records: .json files, directories of them, or zip files (osv.dev's all.zip)",
		Long: `Import OSV vulnerability records into DATA/vulndb, adding to what is there:
a record replaces an earlier one with the same id, and a withdrawn record
removes it.

Every file is read before anything is written, and the database is replaced
in one step: a file that is not OSV JSON, a zip entry that would escape its
directory (zip slip) or a record over 16 MiB fails the whole import and
leaves the database as it was.`,
		Example: `  convoy vulndb import Debian-all.zip
  convoy vulndb import ./osv-records/ GHSA-xxxx-xxxx-xxxx.json`,
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
			fmt.Fprintf(out, "imported %d records (%d withdrawn ignored); the database now holds %d\n", res.Imported, res.Withdrawn, res.DB.Records)
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
			return nil
		},
	}
	cmd.AddCommand(importCmd, statusCmd)
	return cmd
}
