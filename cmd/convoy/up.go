package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"convoy/internal/daemon"
	"convoy/internal/logbuf"
	"convoy/internal/scan"
	"convoy/internal/server"
	"convoy/internal/tlsconf"
)

func upCmd() *cobra.Command {
	o := daemon.Options{}
	var profile, logLevel, logFormat, denySeverity string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run convoy: the HTTPS API endpoint and everything behind it, in one process",
		Long: `Run convoy in the embedded default: one process, state in --data (SQLite,
objects, keys and PKI), one HTTPS endpoint for every AWS API convoy speaks.

On first start convoy creates the data directory (mode 0700), its database, a
certificate authority, a serving certificate for the listen address and
localhost, and an admin access key. When it is ready it writes
DATA/convoy.env (mode 0600) with CONVOY_ENDPOINT, AWS_CA_BUNDLE and the admin
credentials, and prints how to use them. A restart on the same --data keeps
everything. SIGINT or SIGTERM finish in-flight requests, then exit 0.

TLS profiles (--tls-profile):
  modern  TLS 1.3 only, X25519MLKEM768 post-quantum key exchange first (default)
  compat  TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20 only, for older clients
  fips    TLS 1.2 and 1.3, P-256/P-384, AES-GCM only (what --fips uses)
No profile offers TLS 1.0/1.1, CBC or RSA key exchange.

FIPS 140-3: convoy uses Go's validated module when it is on (GODEBUG=fips140=on,
or fips140=only to make any non-approved use an error). --fips then serves
every endpoint with the fips profile and writes CONVOY_FIPS_ENDPOINT;
--fips-listen instead keeps the main endpoint and adds a separate FIPS one.
With the module on, Go holds every TLS connection of the process to approved
algorithms. The only non-approved algorithms convoy uses are MD5 for S3 ETags
and Content-MD5, and SHA-1 for a client's x-amz-checksum-sha1: integrity
identifiers that S3 fixes, isolated in internal/fipsexempt.

Image vulnerability gate (--deny-image-severity, default critical): before a
training or processing job or an endpoint runs an image, convoy scans it
against the OSV database imported with convoy vulndb import and refuses it
if a known vulnerability is of that severity or higher. Without a database
nothing is refused, and convoy says so once at start. An import takes effect
without a restart.`,
		Example: `  convoy up
  convoy up --data /srv/convoy --listen 0.0.0.0:4443 --tls-profile compat
  GODEBUG=fips140=on convoy up --fips
  GODEBUG=fips140=on convoy up --fips-listen 127.0.0.1:4444`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := tlsconf.ParseProfile(profile)
			if err != nil {
				return err
			}
			o.Profile = p
			if o.DenyImageSeverity, err = scan.ParseThreshold(denySeverity); err != nil {
				return fmt.Errorf("--deny-image-severity: %w", err)
			}
			if o.CertLifetime < 2*time.Second {
				return fmt.Errorf("--cert-lifetime %s is too short", o.CertLifetime)
			}
			// Log lines are batched (at most 20 ms) rather than written one
			// write(2) each; Close writes the rest at exit.
			logOut := logbuf.New(os.Stderr)
			defer logOut.Close()
			log, err := newLogger(logLevel, logFormat, logOut)
			if err != nil {
				return err
			}
			o.Logger, o.Stdout = log, cmd.OutOrStdout()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := daemon.Run(ctx, o); err != nil {
				log.Error("convoy up failed", "err", err)
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data", daemon.DefaultDataDir(), "directory for all state: database, objects, keys, PKI")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:4443", "HOST:PORT of the HTTPS API endpoint (:0 picks a free port)")
	f.StringVar(&profile, "tls-profile", "modern", "TLS profile: modern, compat or fips")
	f.BoolVar(&o.FIPS, "fips", false, "FIPS 140-3 mode: needs GODEBUG=fips140=on, uses the fips profile everywhere")
	f.StringVar(&o.FIPSListen, "fips-listen", "", "HOST:PORT of an additional FIPS endpoint (fips profile), as AWS offers separate FIPS endpoints; needs GODEBUG=fips140=on and is written to convoy.env as CONVOY_FIPS_ENDPOINT")
	f.StringVar(&o.Region, "region", "us-east-1", "AWS region name convoy answers as")
	f.DurationVar(&o.CertLifetime, "cert-lifetime", 24*time.Hour, "lifetime of the serving certificates convoy issues; renewed after 2/3 of it")
	f.StringSliceVar(&o.ExtraNames, "san", nil, "extra DNS names or IPs for the serving certificate (repeatable)")
	f.StringVar(&o.TLSCert, "tls-cert", "", "serve this certificate (PEM chain) instead of one from convoy's CA; reloaded when the file changes")
	f.StringVar(&o.TLSKey, "tls-key", "", "private key (PEM) for --tls-cert")
	f.StringVar(&o.CACert, "ca-cert", "", "issue certificates from this CA (PEM) instead of convoy's own")
	f.StringVar(&o.CAKey, "ca-key", "", "private key (PEM) for --ca-cert")
	f.IntVar(&o.MaxConnections, "max-connections", server.DefaultMaxConnections, "most client connections open at once over all HTTPS endpoints; beyond it new connections wait in the kernel's queue until one closes (see convoy_http_open_connections on /metrics)")
	f.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight requests may take to finish on shutdown")
	f.DurationVar(&o.StopGrace, "training-stop-grace", 120*time.Second, "time a training container has between SIGTERM and SIGKILL when its job is stopped or exceeds MaxRuntimeInSeconds")
	f.DurationVar(&o.EndpointHealthInterval, "endpoint-health-interval", 5*time.Second, "pause between health checks (GET /ping, 2 s timeout) of each endpoint instance in service; an instance that fails 3 in a row is taken out of the routes and replaced")
	f.BoolVar(&o.RequireInternodeEncryption, "require-internode-encryption", false, "refuse training and processing jobs of more than one instance that do not set EnableInterContainerTrafficEncryption")
	f.StringVar(&denySeverity, "deny-image-severity", "critical", "refuse images with known vulnerabilities of this severity or higher (critical, high, medium, low or none) to jobs and endpoints; without a database (convoy vulndb import) nothing is refused")
	f.DurationVar(&o.STSMinDuration, "sts-min-session-duration", 0, "shortest STS session a client may request (default 15m, as AWS); for tests")
	f.MarkHidden("sts-min-session-duration")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "json", "json or text")
	return cmd
}

func newLogger(level, format string, out io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(slog.NewJSONHandler(out, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(out, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: choose json or text", format)
}
