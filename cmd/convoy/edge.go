package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"convoy/internal/edge"
	"convoy/internal/tlsconf"
)

func edgeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "edge",
		Short: "Run an edge core: an mTLS MQTT broker for local devices, component IPC, and store-and-forward to a convoy cloud",
		Long: `convoy edge turns a machine into a core device, as AWS IoT Greengrass does:

  devices     connect to the core's MQTT broker over TLS only, each with its own
              client certificate from the core's device CA; the MQTT client ID
              must be the certificate's CN. A device may publish and subscribe
              under devices/<name>/# and subscribe to broadcast/#, nothing else.
              convoy edge devices revoke cuts a device off at once.
  components  on the core connect to DATA/ipc.sock (MQTT, unencrypted: it never
              leaves the machine, as in Greengrass) and are admitted only if
              their user ID is root's, the data directory owner's, or listed in
              --ipc-allow-uid. They may use every topic.
  uplink      every message on devices/+/telemetry/# is stored on disk before it
              is acknowledged (encrypted at rest under DATA/queue.key), then
              uploaded in batches to the cloud convoy's S3 over HTTPS; nothing
              is lost while the cloud is unreachable.
  deployments components (a command and its artifacts, Greengrass-style) are
              fetched from the cloud's S3 over HTTPS, checked against their
              SHA-256 digests and run as supervised processes of an
              unprivileged user (see convoy edge run --help).

Start with convoy edge init, issue device certificates with convoy edge devices
add, then convoy edge run.`,
	}
	cmd.AddCommand(edgeInitCmd(), edgeDevicesCmd(), edgeRunCmd())
	return cmd
}

func edgeInitCmd() *cobra.Command {
	var dir string
	var id edge.Identity
	host, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the core's data directory and PKI (device CA, broker CA)",
		Long: `Create DATA (mode 0700) with two certificate authorities: the device CA,
which signs device certificates and is the only issuer the broker accepts from
devices, and the broker CA, which signs the broker's serving certificate and
which devices trust (the ca.crt of convoy edge devices add). Keys are 0600.

The broker's certificate names localhost, 127.0.0.1, ::1, --name and every --ip;
it lives 30 days and is renewed while convoy edge run runs. Running init again
keeps the CAs and updates the names.`,
		Example: `  convoy edge init --data /srv/edge
  convoy edge init --data /srv/edge --name core1.plant.example --ip 192.168.10.5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := edge.Init(dir, id); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "edge core %q initialised in %s\nnext: convoy edge devices add NAME --data %s --out DIR\n", id.Name, dir, dir)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "data", "", "the core's data directory (required)")
	f.StringVar(&id.Name, "name", host, "the core's name: a DNS name in the broker certificate and its folder in the cloud bucket")
	f.StringSliceVar(&id.IPs, "ip", nil, "extra IP address for the broker certificate (repeatable)")
	cmd.MarkFlagRequired("data")
	return cmd
}

func edgeDevicesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "devices", Short: "Manage the certificates of local devices"}
	var dir, out string
	var lifetime time.Duration
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Issue a client certificate for device NAME",
		Long: `Issue a client certificate with CN=NAME from the core's device CA and write
OUT/NAME.crt, OUT/NAME.key (mode 0600) and OUT/ca.crt (the CA that signs the
broker's certificate). NAME is 1 to 64 letters, digits, '_' or '-', and is the
MQTT client ID the device must use.

Certificates live one year by default (--lifetime): short enough that a lost
device's credential expires by itself, long enough for a device that is out of
reach for months. Re-issue before then; an existing key is never overwritten.
Each certificate's serial is recorded in DATA/devices.json, so that it can be
revoked (convoy edge devices revoke) and listed (convoy edge devices list).`,
		Example: `  convoy edge devices add sensor-1 --data /srv/edge --out ./sensor-1`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			f, err := edge.AddDevice(dir, name, out, lifetime)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device %q: certificate %s valid until %s\n  %s\n  %s\n  %s\n\npublish with:\n  mosquitto_pub --cafile %s --cert %s --key %s -h 127.0.0.1 -p 8883 -i %s -q 1 -t devices/%s/telemetry/temp -m 21.5\n",
				name, f.Serial, f.NotAfter.UTC().Format(time.RFC3339), f.Cert, f.Key, f.CA, f.CA, f.Cert, f.Key, name, name)
			return nil
		},
	}
	add.Flags().StringVar(&dir, "data", "", "the core's data directory (required)")
	add.Flags().StringVar(&out, "out", ".", "directory for NAME.crt, NAME.key and ca.crt")
	add.Flags().DurationVar(&lifetime, "lifetime", edge.DeviceCertLifetime, "certificate lifetime")
	add.MarkFlagRequired("data")
	cmd.AddCommand(add, edgeDevicesRevokeCmd(), edgeDevicesListCmd())
	return cmd
}

func edgeDevicesRevokeCmd() *cobra.Command {
	var dir, reason string
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke every certificate issued to device NAME so far",
		Long: `Revoke every certificate issued to device NAME so far, by serial, in
DATA/devices.json (the device register, mode 0600). A running core notices
within about a second: it refuses the certificates in the TLS handshake and
disconnects the device if it is connected. No restart is needed.

The revocation is of certificates, not of the name: convoy edge devices add
NAME afterwards issues a new certificate that works (remove the old NAME.key
or use another --out).

Certificates issued before convoy recorded serials (they are not in the
register) are revoked by name and date: every such certificate with CN=NAME
issued up to now.`,
		Example: `  convoy edge devices revoke sensor-1 --data /srv/edge --reason "device stolen"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			revoked, err := edge.RevokeDevice(dir, args[0], reason, time.Now())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "device %q: %d certificate(s) revoked now", args[0], len(revoked))
			for _, s := range revoked {
				fmt.Fprintf(w, "\n  serial %s", s)
			}
			fmt.Fprintf(w, "\nunregistered certificates of %q (issued before convoy recorded serials) up to now are revoked too\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", "", "the core's data directory (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the register and the core's log")
	cmd.MarkFlagRequired("data")
	return cmd
}

func edgeDevicesListCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices, their certificates' serials, expiry and revocation",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, err := edge.ListDevices(dir)
			if err != nil {
				return err
			}
			now := time.Now()
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tSERIAL\tNOT AFTER\tSTATE")
			for _, c := range reg.Certificates() {
				state := "valid"
				switch {
				case c.RevokedAt != nil:
					state = "revoked " + c.RevokedAt.UTC().Format(time.RFC3339)
					if c.Reason != "" {
						state += " (" + c.Reason + ")"
					}
				case now.After(c.NotAfter):
					state = "expired"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Device, c.Serial, c.NotAfter.UTC().Format(time.RFC3339), state)
			}
			for _, name := range slices.Sorted(maps.Keys(reg.Devices)) {
				if cut := reg.Devices[name].UnregisteredRevokedBefore; cut != nil {
					fmt.Fprintf(tw, "%s\t(unregistered)\t-\trevoked if issued up to %s\n", name, cut.UTC().Format(time.RFC3339))
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&dir, "data", "", "the core's data directory (required)")
	cmd.MarkFlagRequired("data")
	return cmd
}

func edgeRunCmd() *cobra.Command {
	o := edge.Options{}
	var profile, cloudProfile, cloudEnv, logLevel, logFormat string
	var allow []string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the core: device broker, component IPC, uplink and deployments",
		Long: `Run the edge core initialised in --data.

Devices: MQTT over TLS on --listen (default 127.0.0.1:8883), client certificate
from the device CA required, client ID = certificate CN. There is no plaintext
listener. --tls-profile modern (TLS 1.3, default) or compat (adds TLS 1.2 with
ECDHE and AES-GCM/ChaCha20 only) for older devices.

Components: MQTT on the Unix socket DATA/ipc.sock (or --ipc-socket), mode 0660,
unencrypted; a connection is accepted only if the peer's user ID (SO_PEERCRED)
is 0, the owner of DATA, or in --ipc-allow-uid. DATA is 0700: for other users,
put the socket elsewhere with --ipc-socket.

Revocation: DATA/devices.json (convoy edge devices revoke) is checked every
second; a revoked certificate is refused in the TLS handshake and a connected
device holding one is disconnected.

Uplink: with --bucket, every message on devices/+/telemetry/# is committed to
DATA/edge.db before its QoS 1 PUBACK, topic and payload sealed with AES-256-GCM
under DATA/queue.key (0600, created at first run), then uploaded in JSON Lines
batches to s3://BUCKET/PREFIX<core name>/<first-seq>-<last-seq>.jsonl over HTTPS, verified
against the cloud's CA bundle, and deleted locally only after S3 stored it.
--cloud-env is a copy of the convoy.env that convoy up writes (endpoint, CA
bundle, keys: prefer keys of an IAM user that may only s3:PutObject under
PREFIX and, for deployments, s3:GetObject the document and artifacts).
While the cloud is unreachable, uploads are retried with capped exponential
backoff. When the queue holds --max-queue-bytes, QoS 1 publishes to telemetry
topics are refused (MQTT 5: PUBACK "quota exceeded"; MQTT 3.1.1: the connection
is closed without PUBACK, so the device sends again later), never dropped.

Deployments (on with --bucket, which then needs --component-uid; off with
--deployments=false): every
--deploy-poll the core fetches s3://BUCKET/PREFIXdeployments/<core name>.json
over the same HTTPS client (a conditional GET: an unchanged document costs a
304) and applies it when it changed:

  {"DeploymentId": "d-2",
   "Components": [{
     "ComponentName": "hello", "ComponentVersion": "1.0.0",
     "Artifacts": [{"Uri": "s3://artifacts/hello/run.sh", "Algorithm": "SHA-256",
                    "Digest": "<base64 SHA-256: openssl dgst -sha256 -binary run.sh | base64>",
                    "Unarchive": "NONE"}],
     "Lifecycle": {"Run": ["run.sh", "--verbose"]},
     "Environment": {"GREETING": "hello"}}]}

Every artifact is downloaded to a staging directory while its SHA-256 is
computed; one mismatch fails the whole deployment and installs nothing. Run[0]
is an artifact's file name (made executable) or an absolute path. Components
run in their artifact directory under --deploy-dir (default DATA/deployments),
in their own process group, as --component-uid/--component-gid: a dedicated
user, required, who may not write DATA (its owner could read the core's keys
and replace the files the core opens there; root only with
--allow-root-components), with only PATH, HOME,
LANG, their Environment, CONVOY_EDGE_IPC (the socket, which admits their uid)
and CONVOY_EDGE_COMPONENT: none of the core's environment or cloud keys.
Output goes to DATA/logs/<component>.log (rotated at 4 MiB). A process that
exits is restarted with capped backoff; a new deployment stops the old
processes with SIGTERM, then SIGKILL after --component-stop-grace. A component
that exits within --deploy-settle fails the deployment and the previous one is
restarted. The outcome is written to s3://BUCKET/PREFIXdeployments/<core>.status.json
(SUCCEEDED or FAILED with a reason). A component user other than DATA's owner
cannot traverse DATA (0700): give it --deploy-dir and --ipc-socket in
directories it can reach.

Metrics (off by default): --metrics-listen HOST:PORT (e.g. 127.0.0.1:9464)
serves GET /metrics (Prometheus, names convoy_edge_*) and GET /healthz over
HTTPS only, with the broker's certificate and --tls-profile; a plaintext
request gets no answer. Scrapers verify it with the broker CA (the ca.crt of
convoy edge devices add). Scrapes are not authenticated: the metrics hold
counts, sizes and times, no payload, topic, device name or secret; bind the
listener to loopback or a management network.

When ready, DATA/edge.env holds CONVOY_EDGE_MQTT and CONVOY_EDGE_IPC (and
CONVOY_EDGE_METRICS with --metrics-listen).`,
		Example: `  convoy edge run --data /srv/edge --cloud-env /etc/convoy/cloud.env --bucket telemetry
  convoy edge run --data /srv/edge --listen 0.0.0.0:8883 --tls-profile compat --ipc-allow-uid 1001
  convoy edge run --data /srv/edge --metrics-listen 127.0.0.1:9464
  convoy edge run --data /srv/edge --cloud-env cloud.env --bucket fleet --component-uid 1001 --component-gid 1001 \
      --deploy-dir /srv/edge-components --ipc-socket /run/convoy-edge/ipc.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.Profile, err = tlsconf.ParseProfile(profile); err != nil {
				return err
			}
			if o.CloudProfile, err = tlsconf.ParseProfile(cloudProfile); err != nil {
				return err
			}
			if o.IPCAllowUIDs, err = edge.ParseUIDs(allow); err != nil {
				return fmt.Errorf("--ipc-allow-uid: %w", err)
			}
			if o.Bucket != "" {
				if cloudEnv == "" {
					return fmt.Errorf("--bucket needs --cloud-env: a copy of the convoy.env that convoy up writes")
				}
				if o.Cloud, err = edge.LoadCloudEnv(cloudEnv); err != nil {
					return err
				}
			}
			if o.BackoffMin <= 0 || o.BackoffMax < o.BackoffMin {
				return fmt.Errorf("--retry-min must be positive and at most --retry-max")
			}
			if o.DeployPoll <= 0 || o.DeploySettle <= 0 || o.ComponentStopGrace <= 0 {
				return fmt.Errorf("--deploy-poll, --deploy-settle and --component-stop-grace must be positive")
			}
			if o.DeployDir != "" {
				if o.DeployDir, err = filepath.Abs(o.DeployDir); err != nil {
					return err
				}
			}
			if o.MaxQueueBytes <= 0 {
				return fmt.Errorf("--max-queue-bytes must be positive")
			}
			if o.DataDir, err = filepath.Abs(o.DataDir); err != nil {
				return err
			}
			if o.IPCSocket != "" {
				if o.IPCSocket, err = filepath.Abs(o.IPCSocket); err != nil {
					return err
				}
			}
			log, err := newLogger(logLevel, logFormat, os.Stderr)
			if err != nil {
				return err
			}
			o.Logger = log
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := edge.Run(ctx, o); err != nil {
				log.Error("convoy edge run failed", "err", err)
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DataDir, "data", "", "the core's data directory, made by convoy edge init (required)")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8883", "HOST:PORT of the device broker (MQTT over TLS)")
	f.StringVar(&profile, "tls-profile", "modern", "TLS profile for devices: modern (TLS 1.3) or compat (TLS 1.2 ECDHE+AEAD too)")
	f.StringVar(&o.IPCSocket, "ipc-socket", "", "path of the component socket (default DATA/ipc.sock)")
	f.StringSliceVar(&allow, "ipc-allow-uid", nil, "user ID allowed on the component socket besides root and the owner of DATA (repeatable)")
	f.StringVar(&cloudEnv, "cloud-env", "", "convoy.env of the cloud convoy to upload telemetry to and fetch deployments from")
	f.StringVar(&cloudProfile, "cloud-tls-profile", "modern", "TLS profile of the uplink to the cloud")
	f.StringVar(&o.Bucket, "bucket", "", "cloud bucket for telemetry and deployments; without it nothing is exported or deployed")
	f.StringVar(&o.Prefix, "prefix", "edge/", "key prefix of uploaded objects")
	f.Int64Var(&o.MaxQueueBytes, "max-queue-bytes", 1<<30, "most topic and payload bytes queued for the cloud; beyond it QoS 1 telemetry is refused")
	f.DurationVar(&o.BackoffMin, "retry-min", time.Second, "first pause after a failed upload; doubled after each failure")
	f.DurationVar(&o.BackoffMax, "retry-max", 5*time.Minute, "longest pause between upload attempts")
	f.BoolVar(&o.Deployments, "deployments", true, "with --bucket, poll s3://BUCKET/PREFIXdeployments/<core>.json and run its components")
	f.DurationVar(&o.DeployPoll, "deploy-poll", 30*time.Second, "how often the deployment document is checked")
	f.DurationVar(&o.DeploySettle, "deploy-settle", time.Second, "how long every component must run without exiting for a deployment to succeed")
	f.StringVar(&o.DeployDir, "deploy-dir", "", "where components are installed (default DATA/deployments); must be reachable by --component-uid")
	f.Int64Var(&o.ComponentUID, "component-uid", -1, "user ID components run as: a dedicated user that may not write DATA (required with deployments, unless --allow-root-components)")
	f.Int64Var(&o.ComponentGID, "component-gid", -1, "group ID components run as (default: --component-uid)")
	f.BoolVar(&o.AllowRootComponents, "allow-root-components", false, "allow components to run as root (not recommended)")
	f.DurationVar(&o.ComponentStopGrace, "component-stop-grace", 10*time.Second, "time between SIGTERM and SIGKILL when a component is stopped")
	f.StringVar(&o.MetricsListen, "metrics-listen", "", "HOST:PORT of the HTTPS listener for /metrics and /healthz, e.g. 127.0.0.1:9464 (default off)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "json", "json or text")
	cmd.MarkFlagRequired("data")
	return cmd
}
