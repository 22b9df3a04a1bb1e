package sagemaker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics exports the number of training jobs in each status.
func (s *Service) RegisterMetrics(reg prometheus.Registerer) {
	for _, status := range []string{InProgress, Stopping, Completed, Failed, Stopped} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "convoy_sagemaker_training_jobs",
			Help:        "Training jobs by TrainingJobStatus.",
			ConstLabels: prometheus.Labels{"status": status},
		}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var n float64
			s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sm_training_jobs WHERE status = ?`, status).Scan(&n)
			return n
		}))
	}
}
