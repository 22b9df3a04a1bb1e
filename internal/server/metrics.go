package server

import (
	"crypto/x509"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests          *prometheus.CounterVec
	duration          *prometheus.HistogramVec
	handshakeFailures prometheus.Counter
	certExpiry        prometheus.Gauge
	panics            prometheus.Counter
	openConns         prometheus.Gauge
	connLimit         prometheus.Gauge
	connsWaited       prometheus.Counter
	connsRefused      prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_http_requests_total",
			Help: "API requests answered, by signing service and HTTP status code.",
		}, []string{"service", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "convoy_http_request_duration_seconds",
			Help:    "Time to answer an API request, by signing service.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"service"}),
		handshakeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_tls_handshake_failures_total",
			Help: "TLS handshakes refused or failed (plaintext, old versions, bad certificates, garbage).",
		}),
		certExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "convoy_tls_certificate_expiry_timestamp_seconds",
			Help: "When the serving certificate currently in use expires (Unix time).",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_http_handler_panics_total",
			Help: "Requests whose handler panicked (answered with InternalFailure); each is a bug.",
		}),
		openConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "convoy_http_open_connections",
			Help: "Client connections open now, over all HTTPS listeners.",
		}),
		connLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "convoy_http_connection_limit",
			Help: "The most client connections convoy keeps open at once (convoy up --max-connections).",
		}),
		connsWaited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_http_connections_waited_total",
			Help: "Times the connection limit was full when convoy went to accept a connection, which then waited for another to close (idle and silent connections are closed to make room).",
		}),
		connsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_http_connections_refused_total",
			Help: "Connections closed at once because their source address already held a quarter of the connection limit.",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.handshakeFailures, m.certExpiry, m.panics, m.openConns, m.connLimit, m.connsWaited, m.connsRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(service string, status int, d time.Duration) {
	m.requests.WithLabelValues(service, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(service).Observe(d.Seconds())
}

// CertificateServed records the serving certificate now in use.
func (s *Server) CertificateServed(leaf *x509.Certificate) {
	s.metrics.certExpiry.Set(float64(leaf.NotAfter.Unix()))
}
