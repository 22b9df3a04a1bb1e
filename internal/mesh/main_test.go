package mesh

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"convoy/internal/executor"
)

// The test binary plays other programs when one of these is set: how the
// tests run the real agent without building convoy (the supervisor runs
// os.Args[0] mesh-agent --config FILE, as it runs convoy), and a convoy
// that dies with its agents running.
const (
	agentEnv     = "CONVOY_MESH_TEST_AGENT"     // be a mesh agent
	superviseEnv = "CONVOY_MESH_TEST_SUPERVISE" // set up the host in this HostNet JSON file, print the agent's PID, wait
	idleEnv      = "CONVOY_MESH_TEST_IDLE"      // look like an agent, do nothing
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(agentEnv) != "":
		os.Exit(testAgent())
	case os.Getenv(superviseEnv) != "":
		os.Exit(testSupervise(os.Getenv(superviseEnv)))
	case os.Getenv(idleEnv) != "":
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testAgent() int {
	if len(os.Args) != 4 || os.Args[1] != "mesh-agent" || os.Args[2] != "--config" {
		fmt.Fprintln(os.Stderr, "test agent: want mesh-agent --config FILE, got", os.Args[1:])
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if err := RunAgent(context.Background(), os.Args[3], os.Stdin, os.Stdout, log); err != nil {
		log.Error("mesh agent failed", "err", err)
		return 1
	}
	return 0
}

// testSupervisor runs the test binary as agent.
func testSupervisor(t testing.TB, env ...string) *Supervisor {
	return &Supervisor{
		Command: []string{os.Args[0], "mesh-agent"},
		Env:     append([]string{agentEnv + "=1"}, env...),
		Profile: "modern",
		Log:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// testSupervise is a convoy with one host's agent running.
func testSupervise(hostNetFile string) int {
	data, err := os.ReadFile(hostNetFile)
	var h executor.HostNet
	if err == nil {
		err = json.Unmarshal(data, &h)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sup := &Supervisor{Command: []string{os.Args[0], "mesh-agent"}, Env: []string{agentEnv + "=1", superviseEnv + "="},
		Profile: "modern", Log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	job := sup.NewJob(JobOptions{Lifetime: time.Hour, JobLog: func(string) string { return filepath.Join(h.Dir, "job.log") }})
	if _, err := job.HostSetup(context.Background(), h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(job.process(h.Host).cmd.Process.Pid)
	select {}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}
