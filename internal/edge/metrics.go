package edge

// Prometheus metrics of the core (`convoy edge run --metrics-listen`).
//
// /metrics and /healthz are served over HTTPS only, with the broker's own
// certificate (the rotator the MQTT listener uses, so both renew together)
// and the core's --tls-profile. A connection whose first byte is not a TLS
// handshake record is closed without a byte written: net/http would answer
// it with a plaintext 400, and the core writes no plaintext byte to the
// network.
//
// Scrapes are not authenticated, as the cloud's /metrics is not: the
// metrics are counts, sizes and timestamps — no payload, no topic, no device
// name, no key — so what a reader learns is how busy the core is. The only
// client CA the core has is the device CA, and a certificate from it is an
// MQTT credential: giving the scraper one would let a stolen scraper
// credential publish as a device, which is worse than what it protects.
// The listener is off by default; bind it to loopback or a management
// network. TLS still authenticates the core to the scraper (against the
// broker CA), so nobody in between can read or forge the numbers.
//
// Labels are bounded: refusal reasons, policy actions, deployment results
// and component states are fixed sets; component names come from the
// operator's deployment document. There is no label per device or topic.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"convoy/internal/tlslisten"
)

// Why a device connection was refused (the reason label of
// convoy_edge_device_connections_refused_total).
const (
	refusedNoCertificate = "no_certificate"        // TLS: no client certificate
	refusedUntrusted     = "untrusted_certificate" // TLS: not from the device CA, expired, wrong usage
	refusedRevoked       = "revoked"               // in the device register (revoke.go)
	refusedIdentity      = "identity_mismatch"     // client ID is not the certificate's CN, or the CN is no device name
	refusedWillTopic     = "will_topic"            // a will outside the device policy
	refusedHandshake     = "tls_handshake"         // any other handshake failure: plaintext, old version, closed, timed out
	refusedOther         = "other"
)

var refusalReasons = []string{refusedNoCertificate, refusedUntrusted, refusedRevoked, refusedIdentity, refusedWillTopic, refusedHandshake, refusedOther}

// componentStates are the states of ComponentStatus.
var componentStates = []string{"STARTING", "RUNNING", "ERRORED", "STOPPED"}

// metrics are the core's counters. Every method is a no-op on a nil
// *metrics, so the parts of the core also work (and are tested) alone.
type metrics struct {
	queued         prometheus.Counter
	queueRefused   *prometheus.CounterVec
	exported       prometheus.Counter
	exportFailures prometheus.Counter
	lastExport     prometheus.Gauge
	devRefused     *prometheus.CounterVec
	denied         *prometheus.CounterVec
	ipcRefused     *prometheus.CounterVec
	deployments    *prometheus.CounterVec
	deployStatus   *prometheus.GaugeVec
	lastDeploy     prometheus.Gauge
	restarts       *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		queued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_edge_uplink_messages_queued_total",
			Help: "Telemetry messages committed to the uplink queue (each acknowledged to its device). Its rate is the load the uplink must keep up with.",
		}),
		queueRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_uplink_messages_refused_total",
			Help: "Telemetry messages not queued, by reason (queue_full: --max-queue-bytes reached, the device is told to send again; error: the disk write failed). Any increase needs attention: the cloud is unreachable for too long, or the disk is failing.",
		}, []string{"reason"}),
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_edge_uplink_messages_exported_total",
			Help: "Telemetry messages stored in the cloud's S3 and deleted from the queue. Should follow convoy_edge_uplink_messages_queued_total.",
		}),
		exportFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_edge_uplink_export_failures_total",
			Help: "Export batches that failed (cloud unreachable or refusing, or the queue unreadable); each is retried with backoff. A steady rate means the cloud is not being reached: see the core's log.",
		}),
		lastExport: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "convoy_edge_uplink_last_export_timestamp_seconds",
			Help: "When a batch was last stored in the cloud (Unix time; 0 if none since the core started). Alert when it is old while the queue is not empty.",
		}),
		devRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_device_connections_refused_total",
			Help: "Device connections refused on the MQTT listener, by reason (no_certificate, untrusted_certificate, revoked, identity_mismatch, will_topic, tls_handshake, other). revoked or untrusted_certificate rising means someone holds a credential they should not: see the core's log for the device and address.",
		}, []string{"reason"}),
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_device_policy_denials_total",
			Help: "Publishes and subscriptions of connected devices denied by the device policy, by action (publish, subscribe). Usually a misconfigured device; the log names it, once per device, action and topic.",
		}, []string{"action"}),
		ipcRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_ipc_connections_refused_total",
			Help: "Connections to the component socket refused by their peer credentials (uid_not_allowed: add the uid with --ipc-allow-uid if it is a legitimate component; no_peer_credentials). The log names the uid and pid.",
		}, []string{"reason"}),
		deployments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_deployments_total",
			Help: "Deployment attempts, by result (succeeded, failed). A failure leaves the previous deployment running; its reason is in <core>.status.json and the log.",
		}, []string{"result"}),
		deployStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "convoy_edge_deployment_status",
			Help: "1 for the outcome of the last deployment attempt (status succeeded or failed), 0 for the other; both 0 before the first. Alert on status=\"failed\" == 1.",
		}, []string{"status"}),
		lastDeploy: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "convoy_edge_deployment_last_attempt_timestamp_seconds",
			Help: "When a deployment was last attempted (Unix time; 0 if none since the core started).",
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_edge_component_restarts_total",
			Help: "Times a component's process exited (or did not start) and was restarted, by component. A rising count is a crash loop: see DATA/logs/<component>.log.",
		}, []string{"component"}),
	}
	for _, r := range refusalReasons {
		m.devRefused.WithLabelValues(r)
	}
	for _, a := range []string{"publish", "subscribe"} {
		m.denied.WithLabelValues(a)
	}
	for _, r := range []string{"uid_not_allowed", "no_peer_credentials"} {
		m.ipcRefused.WithLabelValues(r)
	}
	for _, r := range []string{"queue_full", "error"} {
		m.queueRefused.WithLabelValues(r)
	}
	for _, r := range []string{"succeeded", "failed"} {
		m.deployments.WithLabelValues(r)
		m.deployStatus.WithLabelValues(r)
	}
	reg.MustRegister(m.queued, m.queueRefused, m.exported, m.exportFailures, m.lastExport, m.devRefused, m.denied, m.ipcRefused,
		m.deployments, m.deployStatus, m.lastDeploy, m.restarts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// gaugeSources are what the gauges read at scrape time.
type gaugeSources struct {
	queue         *Queue
	maxQueueBytes int64
	broker        *mqtt.Server
	ipcID         string
	leaf          func() *x509.Certificate
	deployer      *Deployer // nil without deployments
	log           *slog.Logger
}

// watch registers the gauges read at scrape time.
func watch(reg *prometheus.Registry, s gaugeSources) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	queue := func(pick func(count, bytes int64) int64) func() float64 {
		return func() float64 { return float64(pick(s.queue.Depth())) }
	}
	var quarantined atomic.Int64
	var quarantineFailing atomic.Bool
	clients := func(ipc bool) func() float64 {
		return func() float64 {
			n := 0
			for _, cl := range s.broker.Clients.GetAll() {
				if !cl.Closed() && (cl.Net.Listener == s.ipcID) == ipc {
					n++
				}
			}
			return float64(n)
		}
	}
	reg.MustRegister(
		gauge("convoy_edge_uplink_queue_messages", "Telemetry messages waiting in the uplink queue for the cloud. Growing while the cloud is reachable means the uplink does not keep up.",
			queue(func(c, _ int64) int64 { return c })),
		gauge("convoy_edge_uplink_queue_bytes", "Bytes (topics, device names, payloads) waiting in the uplink queue. At convoy_edge_uplink_queue_limit_bytes, QoS 1 telemetry is refused: alert well before.",
			queue(func(_, b int64) int64 { return b })),
		gauge("convoy_edge_uplink_queue_limit_bytes", "The most bytes the uplink queue holds (--max-queue-bytes).",
			func() float64 { return float64(s.maxQueueBytes) }),
		gauge("convoy_edge_uplink_quarantined_messages", "Queued messages that did not open (tampered or damaged) and were moved to edge_quarantine, never exported. Anything above 0 needs a look: sqlite3 DATA/edge.db 'SELECT * FROM edge_quarantine'.",
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				n, err := s.queue.Quarantined(ctx)
				if err != nil {
					// Keep the last value rather than report a false 0.
					if quarantineFailing.CompareAndSwap(false, true) {
						s.log.Warn("metrics: cannot count the quarantined messages", "err", err)
					}
					return float64(quarantined.Load())
				}
				quarantineFailing.Store(false)
				quarantined.Store(n)
				return float64(n)
			}),
		gauge("convoy_edge_devices_connected", "Devices connected to the MQTT listener now.", clients(false)),
		gauge("convoy_edge_components_connected", "Components connected to the IPC socket now.", clients(true)),
		gauge("convoy_edge_tls_certificate_expiry_timestamp_seconds", "When the broker's serving certificate (MQTT and /metrics) expires (Unix time). It is renewed after two thirds of its 30 days while the core runs: alert if it is within 7 days.",
			func() float64 { return float64(s.leaf().NotAfter.Unix()) }),
	)
	for _, state := range componentStates {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "convoy_edge_components",
			Help:        "Components of the running deployment, by state (STARTING, RUNNING, ERRORED: exited and waiting to restart, STOPPED).",
			ConstLabels: prometheus.Labels{"state": state},
		}, func() float64 {
			n := 0
			for _, c := range s.deployer.componentStatus() {
				if c.State == state {
					n++
				}
			}
			return float64(n)
		}))
	}
}

func (m *metrics) messageQueued() {
	if m != nil {
		m.queued.Inc()
	}
}

func (m *metrics) messageRefused(err error) {
	if m == nil {
		return
	}
	reason := "error"
	if errors.Is(err, ErrQueueFull) {
		reason = "queue_full"
	}
	m.queueRefused.WithLabelValues(reason).Inc()
}

func (m *metrics) batchExported(messages int) {
	if m != nil {
		m.exported.Add(float64(messages))
		m.lastExport.SetToCurrentTime()
	}
}

func (m *metrics) exportFailed() {
	if m != nil {
		m.exportFailures.Inc()
	}
}

func (m *metrics) deviceRefused(reason string) {
	if m != nil {
		m.devRefused.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) policyDenied(action string) {
	if m != nil {
		m.denied.WithLabelValues(action).Inc()
	}
}

func (m *metrics) ipcConnRefused(reason string) {
	if m != nil {
		m.ipcRefused.WithLabelValues(reason).Inc()
	}
}

// deployed records a deployment attempt's Status (SUCCEEDED or FAILED).
func (m *metrics) deployed(status string) {
	if m == nil {
		return
	}
	result := strings.ToLower(status)
	m.deployments.WithLabelValues(result).Inc()
	for _, r := range []string{"succeeded", "failed"} {
		v := 0.0
		if r == result {
			v = 1
		}
		m.deployStatus.WithLabelValues(r).Set(v)
	}
	m.lastDeploy.SetToCurrentTime()
}

// restartCounter returns what a component's supervisor calls when it
// restarts the process.
func (m *metrics) restartCounter(component string) func() {
	if m == nil {
		return func() {}
	}
	c := m.restarts.WithLabelValues(component)
	return c.Inc
}

// handshakeRefusal names the reason of a failed device TLS handshake.
func handshakeRefusal(err error) string {
	var verr *tls.CertificateVerificationError
	switch {
	case errors.Is(err, errRevoked):
		return refusedRevoked
	case errors.Is(err, errIdentity):
		return refusedIdentity
	case errors.As(err, &verr):
		return refusedUntrusted
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls has no error value for it.
		return refusedNoCertificate
	}
	return refusedHandshake
}

// connectRefusal names the reason of a CONNECT refused by the policy hook.
func connectRefusal(err error) string {
	switch {
	case errors.Is(err, errRevoked):
		return refusedRevoked
	case errors.Is(err, errIdentity):
		return refusedIdentity
	case errors.Is(err, errWillTopic):
		return refusedWillTopic
	}
	return refusedOther
}

// deviceListener is tls.NewListener that also learns how each handshake
// ended, for convoy_edge_device_connections_refused_total. The broker
// gets the *tls.Conn unchanged (the policy hook reads its peer
// certificates), and a goroutine runs the handshake at once; the broker's
// first read waits for it and gets the same result (crypto/tls keeps it),
// so the handshake still runs once, under connectDeadline's deadline.
type deviceListener struct {
	net.Listener
	cfg     *tls.Config
	metrics *metrics
}

func (l deviceListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := tls.Server(c, l.cfg)
	go func() {
		if err := tc.HandshakeContext(context.Background()); err != nil {
			l.metrics.deviceRefused(handshakeRefusal(err))
		}
	}()
	return tc, nil
}

// metricsMaxConns bounds the metrics listener's open connections: a
// scraper keeps one open; more wait in the kernel's listen queue.
const metricsMaxConns = 8

// serveMetrics serves /metrics and /healthz from reg on ln over TLS with
// cfg until ctx ends.
func serveMetrics(ctx context.Context, ln net.Listener, cfg *tls.Config, reg *prometheus.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn), MaxRequestsInFlight: 4, Timeout: 10 * time.Second}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	// TLS only, no plaintext reply to plaintext, at most metricsMaxConns
	// connections, shedding silent, idle and request-less ones while full:
	// internal/tlslisten, as the cloud's endpoints. A peer with no
	// credentials cannot starve the scraper: it waits about a second at
	// most. (No per-address bound: the scraper and a local attacker would
	// share 127.0.0.1.)
	lim := tlslisten.NewLimit(metricsMaxConns)
	shedder := &tlslisten.HTTPShedder{NewGrace: 3 * time.Second}
	lim.Shed = shedder.Shed
	srv := &http.Server{
		Handler:           mux,
		ConnState:         shedder.ConnState,
		ReadHeaderTimeout: 10 * time.Second, // also bounds the TLS handshake
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		// Failed handshakes (scanners, plaintext) at debug.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.Serve(tlslisten.New(ln, cfg, lim))
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("metrics listener: %w", err)
}
