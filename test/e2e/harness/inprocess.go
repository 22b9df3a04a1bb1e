package harness

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"convoy/internal/daemon"
	"convoy/internal/tlsconf"
)

// StartInProcess runs daemon.Run — what `convoy up` runs, wired the same
// way — inside the test process until the test ends, so that the test
// binary's -cpuprofile profiles convoy's own code. Its log goes to a file,
// as text. Side-by-side figures come from the real binary (Start) only.
func StartInProcess(tb testing.TB) *Convoy {
	tb.Helper()
	dir := filepath.Join(tb.TempDir(), "data")
	logFile, err := os.Create(filepath.Join(tb.TempDir(), "convoy.log"))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{
			DataDir: dir, Listen: "127.0.0.1:0", Profile: tlsconf.Modern, Region: "us-east-1",
			CertLifetime: 24 * time.Hour, ShutdownTimeout: 5 * time.Second,
			Logger: slog.New(slog.NewTextHandler(logFile, nil)), Stdout: io.Discard,
		})
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
		logFile.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-done:
			tb.Fatalf("in-process convoy stopped: %v", err)
		default:
		}
		if env, err := ParseEnvFile(filepath.Join(dir, daemon.EnvFile)); err == nil && env["CONVOY_ENDPOINT"] != "" {
			u, err := url.Parse(env["CONVOY_ENDPOINT"])
			if err != nil {
				tb.Fatal(err)
			}
			return &Convoy{DataDir: dir, Env: env, Endpoint: env["CONVOY_ENDPOINT"], Addr: u.Host, CABundle: env["AWS_CA_BUNDLE"]}
		}
		if time.Now().After(deadline) {
			tb.Fatal("in-process convoy did not write convoy.env within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
