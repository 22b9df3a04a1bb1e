package main

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"convoy/internal/tlsconf"
)

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print convoy's version, Go version and FIPS 140-3 module state",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "convoy %s (%s, %s/%s, fips140 module enabled: %v)\n",
				version, runtime.Version(), runtime.GOOS, runtime.GOARCH, tlsconf.FIPSModuleEnabled())
		},
	}
}
