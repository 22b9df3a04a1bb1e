package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"convoy/internal/daemon"
	"convoy/internal/images"
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
	cmd.AddCommand(importCmd, listCmd, rmCmd)
	return cmd
}
