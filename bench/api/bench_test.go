package api

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
)

// The Go benchmarks put convoy and the bare server side by side as
// sub-benchmarks, for benchstat:
//
//	go test -run '^$' -bench 'GetCallerIdentity|S3' -count 5 ./bench/api/ | tee new.txt
//
// Each top-level benchmark starts its own convoy and bare server. The raw
// HTTP workloads speak HTTP/1.1 keep-alive, as the aws CLI does;
// CONVOY_BENCH_PROTO=h2 switches them to HTTP/2. BenchmarkS3Put4KiB uses the
// AWS SDK client of harness.S3, which negotiates HTTP/2. Besides the rate,
// each reports the server's CPU time per op (server-cpu-us/op, from /proc,
// 10 ms resolution) and the share of the machine other processes took
// (others-cpu-%).

func benchProto(b *testing.B) proto {
	switch v := os.Getenv("CONVOY_BENCH_PROTO"); v {
	case "", "h1", "http1.1":
		return h1
	case "h2":
		return h2
	default:
		b.Fatalf("CONVOY_BENCH_PROTO=%q: want h1 or h2", v)
		return ""
	}
}

// report adds the rate and the CPU figures of r to b.
func report(b *testing.B, r result, unit string) {
	b.Helper()
	if err := r.err(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.opsPerSec(), unit)
	if v := r.serverCPUPerOp(); v >= 0 {
		b.ReportMetric(v, "server-cpu-us/op")
	}
	if r.otherCPU >= 0 {
		b.ReportMetric(100*r.otherCPU.Seconds()/(r.elapsed.Seconds()*float64(runtime.NumCPU())), "others-cpu-%")
	}
}

// BenchmarkGetCallerIdentity: signed STS GetCallerIdentity requests from 16
// goroutines; an op is one request.
func BenchmarkGetCallerIdentity(b *testing.B) {
	e := setup(b)
	p := benchProto(b)
	ctx := context.Background()
	for _, tg := range e.targets {
		b.Run(tg.name, func(b *testing.B) {
			b.ResetTimer()
			r := hammer(tg.pid, workers, int64(b.N), 0, func(int64) (int64, error) { return 0, e.callerIdentity(ctx, tg, p) })
			b.StopTimer()
			report(b, r, "req/s")
		})
	}
}

// BenchmarkS3Put1GiB: one op is a PUT of a 1 GiB object (SSE-KMS,
// UNSIGNED-PAYLOAD, streamed from a generator).
func BenchmarkS3Put1GiB(b *testing.B) {
	e := setup(b)
	p := benchProto(b)
	ctx := context.Background()
	const size = 1 << 30
	patternETag(size)
	for _, tg := range e.targets {
		b.Run(tg.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ResetTimer()
			r := hammer(tg.pid, 1, int64(b.N), 0, func(int64) (int64, error) { return e.putLarge(ctx, tg, p, "large/1GiB", size) })
			b.StopTimer()
			report(b, r, "objects/s")
		})
	}
}

// BenchmarkS3Get1GiB: one op is a GET of a 1 GiB SSE-KMS object, streamed
// to io.Discard.
func BenchmarkS3Get1GiB(b *testing.B) {
	e := setup(b)
	p := benchProto(b)
	ctx := context.Background()
	const size = 1 << 30
	for _, tg := range e.targets {
		if _, err := e.putLarge(ctx, tg, p, "large/1GiB", size); err != nil {
			b.Fatal(err)
		}
	}
	for _, tg := range e.targets {
		b.Run(tg.name, func(b *testing.B) {
			b.SetBytes(size)
			b.ResetTimer()
			r := hammer(tg.pid, 1, int64(b.N), 0, func(int64) (int64, error) { return e.getLarge(ctx, tg, p, "large/1GiB", size) })
			b.StopTimer()
			report(b, r, "objects/s")
		})
	}
}

// BenchmarkS3Put4KiB: 4 KiB PutObject calls with the AWS SDK's S3 client
// from 16 goroutines; an op is one object.
func BenchmarkS3Put4KiB(b *testing.B) {
	e := setup(b)
	ctx := context.Background()
	run := 0
	for _, tg := range e.targets {
		b.Run(tg.name, func(b *testing.B) {
			run++
			b.SetBytes(smallSize)
			b.ResetTimer()
			r := hammer(tg.pid, workers, int64(b.N), 0, func(i int64) (int64, error) {
				return smallSize, e.putSmall(ctx, tg, fmt.Sprintf("small/%d/%d", run, i))
			})
			b.StopTimer()
			report(b, r, "objects/s")
		})
	}
}
