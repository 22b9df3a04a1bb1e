package runtime

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of an invocation that reached a variant.
const (
	outcomeOK          = "ok"
	outcomeModelError  = "model_error"  // the container answered 4xx/5xx, timed out or hung up
	outcomeUnavailable = "unavailable"  // no instance to send it to
	outcomeClientError = "client_error" // refused before a variant was chosen (size, headers, variant name)
)

// metrics are the router's Prometheus series. Endpoint and variant labels
// come only from published tables, never from a request, so a client cannot
// grow them; requests refused before an endpoint is known are counted by
// reason alone.
type metrics struct {
	invocations *prometheus.CounterVec
	latency     *prometheus.HistogramVec
	rejected    *prometheus.CounterVec
}

// variantMetrics are one variant's series, looked up once per Set.
type variantMetrics struct {
	ok, modelError, unavailable prometheus.Counter
	latency                     prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_runtime_invocations_total",
			Help: "InvokeEndpoint requests routed to a production variant, by endpoint, variant and outcome (ok, model_error, unavailable).",
		}, []string{"endpoint", "variant", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "convoy_runtime_invocation_duration_seconds",
			Help: "Time from routing an invocation to the end of the container's response, by endpoint and variant.",
			// 250 µs … about 65 s.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 19),
		}, []string{"endpoint", "variant"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "convoy_runtime_rejected_total",
			Help: "InvokeEndpoint requests refused before reaching a variant, by reason.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.invocations, m.latency, m.rejected)
	}
	return m
}

func (m *metrics) variant(endpoint, variant string) variantMetrics {
	return variantMetrics{
		ok:          m.invocations.WithLabelValues(endpoint, variant, outcomeOK),
		modelError:  m.invocations.WithLabelValues(endpoint, variant, outcomeModelError),
		unavailable: m.invocations.WithLabelValues(endpoint, variant, outcomeUnavailable),
		latency:     m.latency.WithLabelValues(endpoint, variant),
	}
}

// forget drops a removed endpoint's series.
func (m *metrics) forget(endpoint string) {
	m.invocations.DeletePartialMatch(prometheus.Labels{"endpoint": endpoint})
	m.latency.DeletePartialMatch(prometheus.Labels{"endpoint": endpoint})
}

// forgetVariant drops a replaced variant's series.
func (m *metrics) forgetVariant(endpoint, variant string) {
	l := prometheus.Labels{"endpoint": endpoint, "variant": variant}
	m.invocations.DeletePartialMatch(l)
	m.latency.DeletePartialMatch(l)
}

func (m *metrics) reject(reason string) { m.rejected.WithLabelValues(reason).Inc() }
