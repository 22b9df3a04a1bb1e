// Package edge is convoy's edge core (`convoy edge`): what AWS IoT Greengrass
// is to a device fleet, in the shape seed 003 describes for data in transit.
//
//   - Local devices reach the core's MQTT broker over TLS only, with mutual
//     authentication: a device presents a certificate from the core's own
//     device CA (`convoy edge devices add`), its MQTT client ID must be the
//     certificate's CN, and a built-in policy confines it to
//     devices/<name>/# (publish and subscribe) and broadcast/# (subscribe).
//     There is no plaintext MQTT listener at all.
//   - Components on the core talk MQTT over a Unix socket, unencrypted: the
//     seed's "local IPC is not encrypted because it never leaves the
//     device". It is not networked, and each connection's peer user ID
//     (SO_PEERCRED) is checked before the broker reads a byte.
//   - A device's certificates are recorded by serial when issued, and a
//     revoked one is refused in the handshake and disconnected if it is
//     connected (revoke.go).
//   - Telemetry (devices/+/telemetry/#) goes to the cloud store-and-forward:
//     queued durably in SQLite, sealed with AES-256-GCM under DIR/queue.key,
//     before a QoS 1 publish is acknowledged, then uploaded in batches to
//     the cloud convoy's S3 over HTTPS, verified against the cloud's CA,
//     and deleted only once S3 has stored it. A row that does not open is
//     quarantined and logged, never exported nor silently dropped
//     (queue.go).
//
// The MQTT protocol (3.1.1 and 5) is github.com/mochi-mqtt/server/v2: a
// broker library with hooks for authentication, ACLs and publishes, so the
// protocol is not re-implemented here. Written by hand, because no library
// fits convoy's rules: the binding of client ID to certificate CN and the
// device policy (policy.go), the device register and revocation
// (revoke.go: no CRL library fits a core that is its own CA and checks a
// local list), the peer-credential listener (peercred.go), the sealed
// durable queue on convoy's state and sealbox packages (queue.go), and the
// exporter (uplink.go). Every tls.Config comes from internal/tlsconf and every
// certificate from internal/pki.
//
//   - Deployments (deploy.go): the core polls a document in the cloud's S3
//     over the same HTTPS client, downloads each component's artifacts
//     checking their SHA-256, and supervises one process per component,
//     as an unprivileged user, with nothing of the core's environment.
//   - Metrics (metrics.go): with --metrics-listen, /metrics (Prometheus)
//     and /healthz over HTTPS only, with the broker's certificate and the
//     core's TLS profile. Scrapes are not authenticated: the metrics are
//     counts, sizes and timestamps, with no payload, topic, device name or
//     secret, and the core's only client CA is the device CA, whose
//     certificates are MQTT credentials a scraper should not hold.
//
// Not yet: archives in deployments, the cloud-side MQTT endpoint, device
// policies beyond the built-in one, rotation of the queue key.
package edge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"convoy/internal/fsutil"
	"convoy/internal/pki"
	"convoy/internal/sealbox"
	"convoy/internal/state"
	"convoy/internal/tlsconf"
)

// Options configure a running core.
type Options struct {
	DataDir string
	// Listen is the device broker's TCP address (MQTT over TLS).
	Listen  string
	Profile tlsconf.Profile
	// IPCSocket is the component socket; "" means DataDir/ipc.sock.
	IPCSocket string
	// IPCAllowUIDs may connect to the IPC socket besides root and the owner
	// of DataDir.
	IPCAllowUIDs []uint32

	// Cloud, when Bucket is set, is where telemetry is exported.
	Cloud        Cloud
	CloudProfile tlsconf.Profile
	Bucket       string
	Prefix       string

	// RevocationPoll is how often the device register is checked for
	// revocations (revoke.go); 0 means a second.
	RevocationPoll time.Duration

	MaxQueueBytes int64
	BackoffMin    time.Duration
	BackoffMax    time.Duration

	// Deployments, with Bucket, polls s3://Bucket/<Prefix>deployments/<core>.json
	// every DeployPoll and runs its components (deploy.go).
	Deployments  bool
	DeployPoll   time.Duration
	DeploySettle time.Duration
	// DeployDir holds installed components; "" means DataDir/deployments.
	DeployDir string
	// ComponentUID and ComponentGID run components; -1 means the owner
	// (and group) of DataDir. UID 0 (also the zero value) is refused
	// unless AllowRootComponents.
	ComponentUID        int64
	ComponentGID        int64
	AllowRootComponents bool
	ComponentStopGrace  time.Duration

	// MetricsListen, when set, is the TCP address of the HTTPS listener
	// serving /metrics and /healthz (metrics.go).
	MetricsListen string

	Logger *slog.Logger
}

// EnvFile is written to DataDir when the core is ready (like convoy.env):
// CONVOY_EDGE_MQTT (host:port), CONVOY_EDGE_IPC (socket path),
// CONVOY_EDGE_PID, and CONVOY_EDGE_METRICS (host:port) with MetricsListen.
const EnvFile = "edge.env"

const ipcListenerID = "ipc"

// Run runs the core until ctx ends.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	id, err := LoadIdentity(o.DataDir)
	if err != nil {
		return err
	}
	envPath := filepath.Join(o.DataDir, EnvFile)
	os.Remove(envPath)

	brokerCA, err := loadCA(serverCADir(o.DataDir))
	if err != nil {
		return fmt.Errorf("broker CA (run `convoy edge init`?): %w", err)
	}
	devices, deviceRoot, err := deviceCAPool(o.DataDir)
	if err != nil {
		return err
	}
	guard, err := newRevocationGuard(o.DataDir, deviceRoot, log)
	if err != nil {
		return err
	}
	certs, err := pki.NewRotator(brokerCA, pki.LeafRequest{CommonName: id.Name, Names: id.Names(), Purpose: pki.ServerAuth, Lifetime: brokerCertLifetime},
		brokerCertPath(o.DataDir), log)
	if err != nil {
		return err
	}
	db, err := state.OpenSQLite(ctx, filepath.Join(o.DataDir, "edge.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	// Background work ends before the database closes (defers run last
	// first), on every return path.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { certs.Run(ctx) })
	queueKey, err := sealbox.LoadOrCreate(filepath.Join(o.DataDir, QueueKeyFile))
	if err != nil {
		return fmt.Errorf("queue key: %w", err)
	}
	queue, err := OpenQueue(ctx, db, queueKey, o.MaxQueueBytes, log)
	if err != nil {
		return err
	}
	quarantined, err := queue.Quarantined(ctx)
	if err != nil {
		return err
	}
	if quarantined > 0 {
		log.Warn("uplink: messages that did not open are kept in edge_quarantine, not exported", "quarantined", quarantined)
	}

	var cloud *s3.Client
	if o.Bucket != "" {
		if cloud, err = newS3(o.Cloud, o.CloudProfile); err != nil {
			return err
		}
	}
	sock := o.IPCSocket
	if sock == "" {
		sock = filepath.Join(o.DataDir, "ipc.sock")
	}
	var deployer *Deployer
	if o.Bucket != "" && o.Deployments {
		if deployer, err = newDeployer(o, cloud, id.Name, sock); err != nil {
			return err
		}
		// Components are admitted on the IPC socket by their user ID.
		o.IPCAllowUIDs = append(slices.Clone(o.IPCAllowUIDs), deployer.UID)
	}

	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	if deployer != nil {
		deployer.metrics = m
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumQos = 1 // QoS 2 is served as 1: the uplink is at-least-once with idempotent objects
	caps.MaximumPacketSize = 256 << 10
	server := mqtt.New(&mqtt.Options{Capabilities: caps, Logger: slog.New(quietPackets{log.Handler()}).With("component", "mqtt")})
	wake := make(chan struct{}, 1)
	if err := server.AddHook(&policyHook{server: server, ipcID: ipcListenerID, log: log, denied: newOnceSet(4096), guard: guard, metrics: m}, nil); err != nil {
		return err
	}
	if err := server.AddHook(&uplinkHook{queue: queue, log: log, wake: wake, metrics: m}, nil); err != nil {
		return err
	}

	tcp, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (choose another --listen)", o.Listen, err)
	}
	tlsCfg := tlsconf.Server(o.Profile, certs.GetCertificate, tlsconf.ServerOptions{NextProtos: []string{"mqtt"}, ClientCAs: devices,
		VerifyConnection: guard.verifyConnection})
	if err := server.AddListener(listeners.NewNet("mqtts", deviceListener{Listener: connectDeadline{tcp}, cfg: tlsCfg, metrics: m})); err != nil {
		tcp.Close()
		return err
	}
	ipc, err := ListenIPC(sock, o.DataDir, o.IPCAllowUIDs, log)
	if err != nil {
		server.Close()
		return err
	}
	ipc.metrics = m
	if deployer != nil {
		// Connecting needs write permission on the socket (0660): give it
		// to the components' group. SO_PEERCRED still checks the uid.
		if err := shareSocket(sock, deployer.GID); err != nil {
			ipc.Close()
			server.Close()
			return err
		}
	}
	if err := server.AddListener(listeners.NewNet(ipcListenerID, connectDeadline{ipc})); err != nil {
		ipc.Close()
		server.Close()
		return err
	}
	if err := server.Serve(); err != nil {
		return err
	}
	defer server.Close()
	wg.Go(func() { guard.run(ctx, server, ipcListenerID, cmp.Or(o.RevocationPoll, time.Second)) })

	if o.Bucket != "" {
		exp := &Exporter{Queue: queue, S3: cloud, Bucket: o.Bucket, Prefix: o.Prefix, Core: id.Name,
			MaxBatch: 1000, MaxBytes: 4 << 20, BackoffMin: o.BackoffMin, BackoffMax: o.BackoffMax, Log: log, Wake: wake, metrics: m}
		wg.Go(func() { exp.Run(ctx) })
		if deployer != nil {
			wg.Go(func() { deployer.Run(ctx) })
		}
	} else {
		log.Warn("no --bucket: telemetry is queued but not exported, and there are no deployments")
	}

	watch(reg, gaugeSources{queue: queue, maxQueueBytes: o.MaxQueueBytes, broker: server, ipcID: ipcListenerID,
		leaf: certs.Leaf, deployer: deployer, log: log})
	metricsAddr := ""
	if o.MetricsListen != "" {
		ln, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w (choose another --metrics-listen)", o.MetricsListen, err)
		}
		metricsAddr = ln.Addr().String()
		// The broker's certificate and profile; no ALPN beyond HTTP.
		cfg := tlsconf.Server(o.Profile, certs.GetCertificate, tlsconf.ServerOptions{})
		wg.Go(func() {
			if err := serveMetrics(ctx, ln, cfg, reg, log.With("component", "metrics")); err != nil {
				log.Error("metrics: listener stopped", "err", err)
			}
		})
	}

	count, size := queue.Depth()
	env := fmt.Sprintf("export CONVOY_EDGE_MQTT='%s'\nexport CONVOY_EDGE_IPC='%s'\nexport CONVOY_EDGE_PID='%d'\n",
		tcp.Addr(), sock, os.Getpid())
	if metricsAddr != "" {
		env += fmt.Sprintf("export CONVOY_EDGE_METRICS='%s'\n", metricsAddr)
	}
	if err := fsutil.WriteFileAtomic(envPath, []byte(env), 0o600); err != nil {
		return err
	}
	log.Info("edge core ready", "core", id.Name, "mqtts", tcp.Addr().String(), "tls_profile", string(o.Profile),
		"ipc", sock, "ipc_uids", fmt.Sprint(ipc.Allow), "bucket", o.Bucket, "metrics", metricsAddr, "queued_messages", count, "queued_bytes", size)
	<-ctx.Done()
	log.Info("edge core stopping")
	os.Remove(envPath)
	return nil
}

// uplinkHook queues telemetry durably. mochi calls OnPublish synchronously
// in the publishing client's read loop, before it writes the PUBACK of a
// QoS 1 publish (server.go, processPublish), so a PUBACK means committed.
type uplinkHook struct {
	mqtt.HookBase
	queue   *Queue
	log     *slog.Logger
	wake    chan struct{}
	metrics *metrics
	// fullLogged is set while the queue is full and that was logged.
	fullLogged atomic.Bool
}

func (h *uplinkHook) ID() string { return "convoy-edge-uplink" }

func (h *uplinkHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *uplinkHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	device, ok := telemetryTopic(pk.TopicName)
	if !ok {
		return pk, nil
	}
	_, err := h.queue.Append(context.Background(), Message{Topic: pk.TopicName, Device: device, Received: time.Now().UTC(), Payload: pk.Payload})
	if err == nil {
		h.metrics.messageQueued()
		select {
		case h.wake <- struct{}{}:
		default:
		}
		h.fullLogged.Store(false)
		return pk, nil
	}
	h.metrics.messageRefused(err)
	count, size := h.queue.Depth()
	if !errors.Is(err, ErrQueueFull) || h.fullLogged.CompareAndSwap(false, true) {
		h.log.Error("uplink: message refused, not queued", "err", err, "client", cl.ID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos,
			"queued_messages", count, "queued_bytes", size)
	}
	if pk.FixedHeader.Qos == 0 {
		// QoS 0 promises nothing; it is still delivered to local subscribers.
		return pk, nil
	}
	if cl.Properties.ProtocolVersion >= 5 {
		// mochi answers PUBACK with this reason code and delivers nothing.
		return pk, packets.ErrQuotaExceeded
	}
	// MQTT 3.1.1 has no negative PUBACK: drop the connection without one,
	// so the device keeps the message and sends it again after reconnecting.
	cl.Stop(packets.ErrQuotaExceeded)
	return pk, packets.ErrRejectPacket
}

// connectTimeout bounds the TLS handshake and the MQTT CONNECT of a new
// connection: mochi sets no deadline until CONNECT has been read (then it
// sets the keepalive's, or none), so without this a peer that never speaks
// would hold a connection forever.
var connectTimeout = 10 * time.Second

type connectDeadline struct{ net.Listener }

func (l connectDeadline) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(connectTimeout))
	return c, nil
}

// newDeployer configures deployments from o.
func newDeployer(o Options, cloud *s3.Client, core, sock string) (*Deployer, error) {
	if o.ComponentUID > math.MaxUint32 || o.ComponentGID > math.MaxUint32 {
		return nil, errors.New("--component-uid and --component-gid must be below 2^32")
	}
	// Components run as a dedicated user, never by default as DATA's owner:
	// a user who may write DATA could read the core's keys and replace the
	// files the root core opens there (Deployer.Check).
	var uid, gid uint32
	switch {
	case o.ComponentUID >= 0:
		uid = uint32(o.ComponentUID)
	case o.AllowRootComponents:
		uid = 0
	default:
		return nil, fmt.Errorf("deployments need --component-uid (and --component-gid): a dedicated user for components that does not own %s (e.g. a system user created for them); or pass --deployments=false to export telemetry only", o.DataDir)
	}
	gid = uid
	if o.ComponentGID >= 0 {
		gid = uint32(o.ComponentGID)
	}
	dir := o.DeployDir
	if dir == "" {
		dir = filepath.Join(o.DataDir, "deployments")
	}
	grace := o.ComponentStopGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	return &Deployer{S3: cloud, Bucket: o.Bucket, Prefix: o.Prefix, Core: core, Dir: dir, LogDir: filepath.Join(o.DataDir, "logs"),
		IPC: sock, UID: uid, GID: gid, AllowRoot: o.AllowRootComponents, DataDir: o.DataDir,
		Poll: cmp.Or(o.DeployPoll, 30*time.Second), Settle: cmp.Or(o.DeploySettle, time.Second), StopGrace: grace,
		RestartMin: 200 * time.Millisecond, RestartMax: time.Minute, Log: o.Logger}, nil
}

// ParseUIDs parses a list of numeric user IDs.
func ParseUIDs(list []string) ([]uint32, error) {
	var out []uint32
	for _, s := range list {
		u, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user ID %q: want a number", s)
		}
		out = append(out, uint32(u))
	}
	return out, nil
}
