package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"convoy/internal/daemon"
	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"
)

// convoy has no pprof endpoint. To see where its time goes, the in-process
// benchmarks run daemon.Run — what `convoy up` runs, wired the same way —
// inside the test process, so that the test binary's -cpuprofile profiles
// it (together with the client, whose frames are easy to tell apart):
//
//	go test -run '^$' -bench 'InProcess/GetCallerIdentity' -benchtime 20000x \
//	    -cpuprofile /tmp/cpu.out ./bench/api/
//	go tool pprof -top -cum /tmp/cpu.out
//
// The side-by-side figures come from the real binary (harness.Start) only.

// startInProcess runs convoy in this process until the test ends. Its log
// goes to a file, as text, as the harness asks of the binary.
func startInProcess(tb testing.TB) *harness.Convoy {
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
		if env, err := harness.ParseEnvFile(filepath.Join(dir, daemon.EnvFile)); err == nil && env["CONVOY_ENDPOINT"] != "" {
			u, err := url.Parse(env["CONVOY_ENDPOINT"])
			if err != nil {
				tb.Fatal(err)
			}
			return &harness.Convoy{DataDir: dir, Env: env, Endpoint: env["CONVOY_ENDPOINT"], Addr: u.Host, CABundle: env["AWS_CA_BUNDLE"]}
		}
		if time.Now().After(deadline) {
			tb.Fatal("in-process convoy did not write convoy.env within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkInProcess runs the workloads against an in-process convoy, for
// profiles. Its figures are not comparable with the others': client and
// server share one Go runtime.
func BenchmarkInProcess(b *testing.B) {
	c := startInProcess(b)
	e := newEnv(b, c, 0)
	e.prepare(b)
	conv := e.targets[0]
	p := benchProto(b)
	ctx := context.Background()
	const large = 1 << 30
	patternETag(large) // before anything is timed or profiled
	b.Run("GetCallerIdentity", func(b *testing.B) {
		r := hammer(0, workers, int64(b.N), 0, func(int64) (int64, error) { return 0, e.callerIdentity(ctx, conv, p) })
		report(b, r, "req/s")
	})
	b.Run("PutObject4KiB", func(b *testing.B) {
		b.SetBytes(smallSize)
		r := hammer(0, workers, int64(b.N), 0, func(i int64) (int64, error) {
			return smallSize, e.putSmall(ctx, conv, fmt.Sprintf("small/%d/%d", b.N, i))
		})
		report(b, r, "objects/s")
	})
	b.Run("Put1GiB", func(b *testing.B) {
		b.SetBytes(large)
		r := hammer(0, 1, int64(b.N), 0, func(int64) (int64, error) { return e.putLarge(ctx, conv, p, "large/1GiB", large) })
		report(b, r, "objects/s")
	})
	b.Run("Get1GiB", func(b *testing.B) {
		// Put1GiB leaves the object; alone, this PUTs it first (and the
		// profile shows that PUT too).
		if _, err := conv.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(e.bucket), Key: aws.String("large/1GiB")}); err != nil {
			if _, err := e.putLarge(ctx, conv, p, "large/1GiB", large); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
		}
		b.SetBytes(large)
		r := hammer(0, 1, int64(b.N), 0, func(int64) (int64, error) { return e.getLarge(ctx, conv, p, "large/1GiB", large) })
		report(b, r, "objects/s")
	})
}
