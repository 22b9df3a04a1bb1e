package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"convoy/internal/client"
	"convoy/internal/daemon"
)

func jobsCmd() *cobra.Command {
	var dataDir string
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "jobs [--data DIR] [--watch INTERVAL]",
		Short: "Show training, processing and transform jobs and their status",
		Long: `Show the training, processing and batch transform jobs of a running convoy,
newest first, with their status, what they are doing now (SageMaker's
secondary status), how long they have run and, for failed jobs, why.

convoy jobs asks the running convoy over its API, exactly as the aws CLI
would (TLS verified against convoy's CA, requests signed with the admin keys
of DATA/convoy.env), so convoy up must be running on DATA.

The same information, per job: aws sagemaker describe-training-job
--training-job-name NAME; a job's output: convoy logs NAME.`,
		Example: `  convoy jobs
  convoy jobs --watch 2s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := client.ReadEnv(dataDir)
			if err != nil {
				return err
			}
			c, err := client.New(env)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			for {
				rows, err := listJobs(ctx, c)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				if watch > 0 {
					fmt.Fprintf(cmd.OutOrStdout(), "\n%s\n", time.Now().Format(time.TimeOnly))
				}
				printJobs(cmd.OutOrStdout(), rows, time.Now())
				if watch <= 0 {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(watch):
				}
			}
		},
	}
	cmd.Flags().StringVar(&dataDir, "data", daemon.DefaultDataDir(), "convoy's data directory (as for convoy up)")
	cmd.Flags().DurationVar(&watch, "watch", 0, "print the table again every INTERVAL until interrupted")
	return cmd
}

type jobRow struct {
	name, kind, status, detail, failure string
	created, ended                      time.Time
}

// epoch reads a JSON timestamp as the AWS JSON protocol sends it.
func epoch(v any) time.Time {
	f, ok := v.(float64)
	if !ok || f == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(f*1e9))
}

func str(m map[string]any, k string) string { s, _ := m[k].(string); return s }

// listJobs pages through the job lists and asks for the failure reason
// of failed training jobs (their summaries lack it).
func listJobs(ctx context.Context, c *client.Client) ([]jobRow, error) {
	var rows []jobRow
	for _, kind := range []struct{ label, op, list, name, status, end string }{
		{"training", "ListTrainingJobs", "TrainingJobSummaries", "TrainingJobName", "TrainingJobStatus", "TrainingEndTime"},
		{"processing", "ListProcessingJobs", "ProcessingJobSummaries", "ProcessingJobName", "ProcessingJobStatus", "ProcessingEndTime"},
		{"transform", "ListTransformJobs", "TransformJobSummaries", "TransformJobName", "TransformJobStatus", "TransformEndTime"},
	} {
		token := ""
		for {
			in := map[string]any{"MaxResults": 100}
			if token != "" {
				in["NextToken"] = token
			}
			var out map[string]any
			if err := c.CallJSON(ctx, "sagemaker", "SageMaker."+kind.op, in, &out); err != nil {
				return nil, fmt.Errorf("%s: %w", kind.op, err)
			}
			items, _ := out[kind.list].([]any)
			for _, it := range items {
				m, _ := it.(map[string]any)
				r := jobRow{name: str(m, kind.name), status: str(m, kind.status), detail: str(m, "SecondaryStatus"),
					failure: str(m, "FailureReason"), created: epoch(m["CreationTime"]), ended: epoch(m[kind.end])}
				r.kind = kind.label
				if r.kind == "training" && r.status == "Failed" {
					var d map[string]any
					if err := c.CallJSON(ctx, "sagemaker", "SageMaker.DescribeTrainingJob", map[string]any{"TrainingJobName": r.name}, &d); err == nil {
						r.failure = str(d, "FailureReason")
					}
				}
				rows = append(rows, r)
			}
			token = str(out, "NextToken")
			if token == "" {
				break
			}
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].created.After(rows[j].created) })
	return rows, nil
}

func printJobs(w io.Writer, rows []jobRow, now time.Time) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no jobs yet: create one with aws sagemaker create-training-job")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATUS\tNOW\tCREATED\tRAN\tFAILURE")
	for _, r := range rows {
		end := r.ended
		if end.IsZero() {
			end = now
		}
		ran := end.Sub(r.created).Round(time.Second)
		failure := r.failure
		if len(failure) > 80 {
			failure = failure[:77] + "..."
		}
		detail := r.detail
		if detail == "" {
			detail = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\t%s\t%s\n", r.name, r.kind, r.status, detail,
			now.Sub(r.created).Round(time.Second), ran, strings.ReplaceAll(failure, "\n", " "))
	}
	tw.Flush()
}
