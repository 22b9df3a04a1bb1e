package objectstore

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	bytesIn  prometheus.Counter
	bytesOut prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, s *Store) *metrics {
	m := &metrics{
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_s3_bytes_received_total",
			Help: "Object bytes received (plaintext, after aws-chunked decoding).",
		}),
		bytesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "convoy_s3_bytes_sent_total",
			Help: "Object bytes sent in GET responses (plaintext).",
		}),
	}
	count := func(q string) func() float64 {
		return func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var n float64
			s.db.QueryRowContext(ctx, q).Scan(&n)
			return n
		}
	}
	if reg != nil {
		reg.MustRegister(m.bytesIn, m.bytesOut,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "convoy_s3_objects", Help: "Objects stored."},
				count(`SELECT COUNT(*) FROM s3_objects`)),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "convoy_s3_stored_bytes", Help: "Plaintext bytes of stored objects."},
				count(`SELECT COALESCE(SUM(size), 0) FROM s3_objects`)),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "convoy_s3_multipart_uploads", Help: "Multipart uploads in progress."},
				count(`SELECT COUNT(*) FROM s3_uploads`)),
		)
	}
	return m
}
