package daemon

import (
	"log/slog"
	"os"

	"convoy/internal/mesh"
)

// meshSupervisor runs the inter-node encryption agents of distributed jobs
// with this very binary (`convoy mesh-agent`), or is nil, with a warning,
// when they cannot run here; jobs that ask for encryption are then
// refused, never run in clear.
func meshSupervisor(o Options, log *slog.Logger) *mesh.Supervisor {
	exe, err := os.Executable()
	if err != nil {
		log.Warn("inter-node encryption is unavailable: jobs of several instances that ask for it will be refused", "err", err)
		return nil
	}
	sup := &mesh.Supervisor{Command: []string{exe, "mesh-agent"}, Profile: o.Profile, Log: log}
	if err := sup.Check(); err != nil {
		log.Warn("inter-node encryption is unavailable: jobs of several instances that ask for it will be refused", "err", err)
		return nil
	}
	return sup
}
