package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"convoy/internal/cwlogs"
	"convoy/internal/daemon"
	"convoy/internal/sagemaker"
)

func logsCmd() *cobra.Command {
	var dataDir string
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs [--data DIR] [--follow] JOB [HOST]",
		Short: "Print a training job's host logs",
		Long: `Print the raw output (stdout and stderr) of a training job's hosts, as kept in
DATA/jobs/<job>/logs after the job ends. HOST (algo-1, algo-2, …) picks one
host; without it every host's log is printed, each line prefixed with its host
when the job has more than one. --follow keeps printing new output until
interrupted.

The same logs are served over the CloudWatch Logs API, log group
/aws/sagemaker/TrainingJobs, stream JOB/HOST-1 (e.g. my-job/algo-1-1).`,
		Example: `  convoy logs my-job
  convoy logs --follow my-job algo-2`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, ok := sagemaker.JobLogDirs(filepath.Join(dataDir, "jobs")).LogDir(args[0])
			if !ok {
				return fmt.Errorf("training job %s has no logs in %s", args[0], dataDir)
			}
			host := ""
			if len(args) == 2 {
				host = args[1]
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return cwlogs.Print(ctx, cmd.OutOrStdout(), dir, host, follow, 500*time.Millisecond)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", daemon.DefaultDataDir(), "convoy's data directory (as for convoy up)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until interrupted")
	return cmd
}
