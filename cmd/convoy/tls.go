package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"convoy/internal/tlscheck"
	"convoy/internal/tlsconf"
)

func tlsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "tls", Short: "Inspect TLS endpoints"}
	var profile, caFile, serverName string
	var asJSON bool
	check := &cobra.Command{
		Use:   "check HOST:PORT",
		Short: "Grade a TLS endpoint against a convoy TLS profile",
		Long: `Connect to HOST:PORT and report the TLS version, cipher suite, key exchange
group (and whether it is post-quantum), ALPN, session resumption and the
certificate chain with its expiry. Then offer what the profile forbids (TLS
1.0/1.1, TLS 1.2 under modern, CBC suites, RSA key exchange, groups outside
the profile) and check that each is refused.

Exits 0 when the endpoint is at least as strong as the profile, 1 otherwise,
listing each finding.`,
		Example: `  source ~/.local/share/convoy/convoy.env
  convoy tls check 127.0.0.1:4443 --ca "$AWS_CA_BUNDLE"
  convoy tls check 127.0.0.1:4443 --ca "$AWS_CA_BUNDLE" --profile compat --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := tlsconf.ParseProfile(profile)
			if err != nil {
				return err
			}
			o := tlscheck.Options{Profile: p, ServerName: serverName}
			if caFile != "" {
				pemBytes, err := os.ReadFile(caFile)
				if err != nil {
					return err
				}
				o.Roots = x509.NewCertPool()
				if !o.Roots.AppendCertsFromPEM(pemBytes) {
					return fmt.Errorf("no certificate in %s", caFile)
				}
			}
			rep, err := tlscheck.Check(context.Background(), args[0], o)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.Encode(rep)
			} else {
				printReport(out, rep)
			}
			if len(rep.Findings) > 0 {
				return errors.New("endpoint is weaker than profile " + profile)
			}
			return nil
		},
	}
	f := check.Flags()
	f.StringVar(&profile, "profile", "modern", "profile to grade against: modern, compat or fips")
	f.StringVar(&caFile, "ca", "", "CA certificate (PEM) to verify the chain; default the system roots")
	f.StringVar(&serverName, "server-name", "", "name to send in SNI and verify; default the host of HOST:PORT")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.AddCommand(check)
	return cmd
}

func printReport(w io.Writer, r *tlscheck.Report) {
	pq := "no"
	if r.PostQuantum {
		pq = "yes"
	}
	fmt.Fprintf(w, "endpoint      %s (SNI %s)\n", r.Address, r.ServerName)
	fmt.Fprintf(w, "version       %s\n", r.Version)
	fmt.Fprintf(w, "cipher suite  %s\n", r.CipherSuite)
	fmt.Fprintf(w, "key exchange  %s (post-quantum: %s)\n", r.Group, pq)
	fmt.Fprintf(w, "alpn          %s\n", r.ALPN)
	fmt.Fprintf(w, "resumption    %v\n", r.Resumption)
	verified := "verified"
	if !r.Verified {
		verified = "NOT verified: " + r.VerifyError
	}
	fmt.Fprintf(w, "chain         %s\n", verified)
	for i, c := range r.Chain {
		fmt.Fprintf(w, "  [%d] %s\n      issuer %s, %s, expires %s (in %s)\n", i, c.Subject, c.Issuer, c.Key,
			c.NotAfter.UTC().Format("2006-01-02 15:04:05Z"), c.ExpiresIn)
		if len(c.Names) > 0 {
			fmt.Fprintf(w, "      names %v\n", c.Names)
		}
	}
	fmt.Fprintln(w, "weak offers")
	for _, p := range r.Probes {
		verdict := "refused"
		if p.Accepted {
			verdict = "ACCEPTED"
		}
		fmt.Fprintf(w, "  %-45s %s (%s)\n", p.Offer, verdict, p.Detail)
	}
	if len(r.Findings) == 0 {
		fmt.Fprintf(w, "result        PASS: at least as strong as profile %s\n", r.Profile)
		return
	}
	fmt.Fprintf(w, "result        FAIL against profile %s:\n", r.Profile)
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  - %s\n", f)
	}
}
