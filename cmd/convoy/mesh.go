package main

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"convoy/internal/mesh"
)

// meshAgentCmd is the inter-node encryption agent of one host of a
// distributed job. convoy starts it, in the host's network namespace, and
// talks to it on its standard input and output; it is not for people.
func meshAgentCmd() *cobra.Command {
	var config, logLevel string
	cmd := &cobra.Command{
		Use:    "mesh-agent --config FILE",
		Short:  "Inter-node encryption agent of one host of a job (started by convoy)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			// convoy stops the agent by closing its standard input; signals
			// are for people, and a stray Ctrl-C must not take the tunnel down.
			signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
			if err := mesh.RunAgent(cmd.Context(), config, os.Stdin, os.Stdout, log); err != nil {
				log.Error("mesh agent failed", "err", err)
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "agent configuration written by convoy (agent.json)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	cmd.MarkFlagRequired("config")
	return cmd
}
