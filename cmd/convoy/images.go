package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"convoy/internal/daemon"
	"convoy/internal/images"
	"convoy/internal/scan"
)

func imagesCmd() *cobra.Command {
	var dataDir string
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Manage the local container image store that training jobs run from",
		Long: `convoy runs training containers from its own image store in DATA/images;
it pulls from no registry. Import an image saved with docker save (or an OCI
image layout from skopeo, buildah, crane, podman …), then name it in a
training job's AlgorithmSpecification.TrainingImage.

References are normalised like Docker's: trainer means
docker.io/library/trainer:latest. A job's TrainingImage resolves
  - by digest (name@sha256:…): the imported image with that manifest digest;
  - exactly, as imported;
  - for an Amazon ECR reference, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG,
    also to REPO:TAG imported without a registry, so a job written for
    SageMaker runs unchanged with an image imported as REPO:TAG.

The store works whether or not convoy up is running; both lock what they share.`,
		Example: `  docker save trainer:1 -o trainer.tar
  convoy images import trainer.tar trainer:1
  convoy images list
  convoy images rm trainer:1`,
	}
	cmd.PersistentFlags().StringVar(&dataDir, "data", daemon.DefaultDataDir(), "convoy's data directory (as for convoy up)")

	importCmd := &cobra.Command{
		Use:   "import FILE NAME[:TAG]",
		Short: "Import a docker-archive or OCI image layout (tar file or directory)",
		Long: `Import the image in FILE under NAME[:TAG] (the tag defaults to latest).

FILE is a docker save archive, or an OCI image layout as a tar file or a
directory; which one is told from its content. Every blob's digest is
checked as it is stored, and the image is listed only once all of it is.
A compressed archive must be decompressed first.`,
		Example: `  convoy images import trainer.tar trainer:1
  convoy images import ./oci-layout-dir 123456789012.dkr.ecr.us-east-1.amazonaws.com/trainer:1`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := images.Open(dataDir)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			_, err = s.Import(ctx, args[0], args[1], cmd.OutOrStdout())
			return err
		},
	}
	listCmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List imported images",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := images.Open(dataDir)
			if err != nil {
				return err
			}
			imgs, err := s.List()
			if err != nil {
				return err
			}
			return images.WriteTable(cmd.OutOrStdout(), imgs)
		},
	}
	rmCmd := &cobra.Command{
		Use:     "rm NAME[:TAG]",
		Aliases: []string{"remove"},
		Short:   "Remove an image reference, and the blobs no other reference needs",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := images.Open(dataDir)
			if err != nil {
				return err
			}
			if err := s.Remove(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		},
	}
	var asJSON bool
	var failOn string
	scanCmd := &cobra.Command{
		Use:   "scan NAME[:TAG]",
		Short: "List the known vulnerabilities of an image's packages",
		Long: `Scan an imported image against the vulnerability database (convoy vulndb
import): its Debian or Alpine packages, the modules and Go version of its Go
binaries, and its Python packages. Findings are listed most severe first,
with the version that fixes each when the database names one.

Severity is the record's own rating (GitHub advisories' LOW, MODERATE, HIGH,
CRITICAL; Canonical's priority), else NVD's rating of its CVSS base score;
for a record that states none (Debian's), NVD's rating of its CVE from the
imported NVD feeds (convoy vulndb import --help), marked * in the table and
"severity_source": "nvd" with the CVE and score in --json; else UNKNOWN.
UNKNOWN findings are listed but never reach a threshold.

--fail-on exits non-zero when a finding reaches that severity, for scripts;
convoy up applies the same test to every image it runs
(--deny-image-severity).`,
		Example: `  convoy images scan trainer:1
  convoy images scan trainer:1 --json
  convoy images scan trainer:1 --fail-on high`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			threshold := scan.Unknown
			if failOn != "" {
				var err error
				if threshold, err = scan.ParseThreshold(failOn); err != nil {
					return fmt.Errorf("--fail-on: %w", err)
				}
			}
			db, err := scan.Load(dataDir)
			if err != nil {
				return err
			}
			s, err := images.Open(dataDir)
			if err != nil {
				return err
			}
			img, err := s.Resolve(args[0])
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rootfs, err := s.RootFS(ctx, img)
			if err != nil {
				return err
			}
			r, err := scan.ScanImage(db, img, rootfs)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				err = enc.Encode(r)
			} else {
				err = scan.WriteTable(out, r)
			}
			if err != nil {
				return err
			}
			if n := len(r.AtOrAbove(threshold)); n > 0 {
				return fmt.Errorf("%s: %d known vulnerabilities of severity %s or higher (--fail-on %s)", args[0], n, threshold, failOn)
			}
			return nil
		},
	}
	scanCmd.Flags().BoolVar(&asJSON, "json", false, "write the report as JSON")
	scanCmd.Flags().StringVar(&failOn, "fail-on", "", "exit 1 when a finding is of this severity or higher: critical, high, medium or low")
	cmd.AddCommand(importCmd, listCmd, rmCmd, scanCmd)
	return cmd
}
