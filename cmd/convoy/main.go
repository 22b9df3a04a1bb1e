// Command convoy is a self-hosted ML platform and edge core that speaks the
// AWS wire protocols and encrypts and authenticates every byte it moves.
package main

import (
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X main.version=…".
var version = "dev"

func main() {
	root := &cobra.Command{
		Use:   "convoy",
		Short: "A self-hosted ML platform and edge core that speaks AWS and never sends a byte in clear",
		Long: `convoy runs SageMaker-style training and inference and a Greengrass-style edge
core on your own machines. It speaks the AWS wire protocols, so the aws CLI,
boto3 and the AWS SDKs work against it unchanged, and every connection it
accepts or makes is TLS 1.3 (or 1.2 with forward secrecy) and authenticated.

Start it, then point your tools at it:

  convoy up
  source ~/.local/share/convoy/convoy.env
  aws --endpoint-url "$CONVOY_ENDPOINT" sts get-caller-identity`,
		SilenceUsage: true,
	}
	root.AddCommand(upCmd(), versionCmd(), tlsCmd(), imagesCmd(), vulndbCmd(), logsCmd(), jobsCmd(), meshAgentCmd(), edgeCmd())
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
