package sagemaker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"convoy/internal/executor"
	"convoy/internal/mesh"
)

// Inter-container traffic encryption (EnableInterContainerTrafficEncryption)
// of jobs with more than one instance is internal/mesh's: the runner hands
// the job's executor a HostSetup that installs it in every host's network
// namespace before the containers start, and stops the job if a host's
// tunnel dies. Without the flag the hosts talk in clear, as on SageMaker,
// unless the installation requires encryption (RequireInterContainerEncryption)
// or an IAM policy does (condition key sagemaker:InterContainerTrafficEncryption).

// RequireInterContainerEncryption makes CreateTrainingJob and
// CreateProcessingJob refuse jobs of more than one instance that do not
// ask for inter-container traffic encryption (convoy up
// --require-internode-encryption).
func (s *Service) RequireInterContainerEncryption() { s.requireICE = true }

// checkInterContainerEncryption applies the installation's setting to a
// job of hosts instances; field names the request's flag.
func (s *Service) checkInterContainerEncryption(enabled bool, hosts int, field string) error {
	if s.requireICE && hosts > 1 && !enabled {
		return validation("This convoy requires inter-container traffic encryption for every job with more than one instance "+
			"(it was started with --require-internode-encryption): set %s to true. The traffic between the job's hosts is then "+
			"encrypted and mutually authenticated.", field)
	}
	return nil
}

// validateMesh refuses an encrypted job of several hosts when this runner
// cannot encrypt, rather than run it in clear.
func (r *LocalRunner) validateMesh(enabled bool, hosts int) error {
	if !enabled || hosts < 2 {
		return nil
	}
	if r.Mesh == nil {
		return validation("EnableInterContainerTrafficEncryption with more than one instance needs inter-node encryption, which this convoy cannot provide (see its log at start); it will not run the job unencrypted")
	}
	if err := r.Mesh.Check(); err != nil {
		return validation("EnableInterContainerTrafficEncryption with more than one instance cannot be honoured: %v; convoy will not run the job unencrypted", err)
	}
	return nil
}

// jobFailure cancels a job's context when something the job depends on
// failed while it ran: the runner stops the job and reports it Failed
// with this reason.
type jobFailure struct{ reason string }

func (f *jobFailure) Error() string { return f.reason }

// stoppedFailed is what wait reports for a job stopped by a jobFailure.
const stoppedFailed = "failed"

// withMesh puts inter-node encryption into spec and returns the context
// the job must run under: it is cancelled with a jobFailure when a host's
// tunnel exits. Call done when the job has ended (the hosts' agents stop
// earlier, with the executor's Cleanup).
func (j *jobRun) withMesh(ctx context.Context, spec *executor.JobSpec, maxRuntime time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	grace := j.r.StopGrace
	if grace <= 0 {
		grace = defaultStopGrace
	}
	logs := filepath.Join(j.dir, "logs")
	mj := j.r.Mesh.NewJob(mesh.JobOptions{
		// The certificates last as long as the job may: its run time, its
		// grace period, and staging that may still be under way.
		Lifetime: maxRuntime + grace + time.Hour,
		JobLog:   func(host string) string { return filepath.Join(logs, host+".log") },
		OnFailure: func(e *mesh.TunnelError) {
			j.log.Error("inter-node encryption failed; stopping the job", "host", e.Host, "err", e)
			cancel(&jobFailure{fmt.Sprintf("InternalServerError: %v; the job was stopped so that no traffic could flow unprotected", e)})
		},
	})
	spec.HostSetup = mj.HostSetup
	return ctx, func() {
		mj.Close()
		cancel(nil)
	}
}

// failureOf returns the reason of a job stopped by a jobFailure.
func failureOf(ctx context.Context) string {
	var f *jobFailure
	if errors.As(context.Cause(ctx), &f) {
		return f.reason
	}
	return "InternalServerError: the job was stopped after a failure in convoy; see convoy's log"
}
