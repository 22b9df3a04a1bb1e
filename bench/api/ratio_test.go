package api

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"convoy/test/e2e/harness"

	"convoy/bench/procstat"
)

// The ratio tests are the side-by-side measurement RESULTS.md quotes. Each
// alternates rounds against convoy and the bare server (ABBA order, so that
// drift in the load of the shared machine falls on both) and logs the
// medians and convoy/bare. They are measurements, not assertions: no figure
// fails them, only a failed request does. They run only with CONVOY_BENCH=1.
//
//	CONVOY_BENCH_ROUNDS       rounds per workload (5)
//	CONVOY_BENCH_ROUND_TIME   length of a round of the rate workloads (3s)
//	CONVOY_BENCH_LARGE_MIB    size of the large object in MiB (1024)

// workers is the number of concurrent clients of the rate workloads.
const workers = 16

type settings struct {
	rounds    int
	roundTime time.Duration
	large     int64
}

func benchSettings(tb testing.TB) settings {
	tb.Helper()
	s := settings{rounds: 5, roundTime: 3 * time.Second, large: 1 << 30}
	if v := os.Getenv("CONVOY_BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			tb.Fatalf("CONVOY_BENCH_ROUNDS=%q: want a positive integer", v)
		}
		s.rounds = n
	}
	if v := os.Getenv("CONVOY_BENCH_ROUND_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			tb.Fatalf("CONVOY_BENCH_ROUND_TIME=%q: want a positive duration", v)
		}
		s.roundTime = d
	}
	if v := os.Getenv("CONVOY_BENCH_LARGE_MIB"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 || n > 5<<10 {
			tb.Fatalf("CONVOY_BENCH_LARGE_MIB=%q: want 1 to 5120", v)
		}
		s.large = n << 20
	}
	return s
}

func needBench(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv("CONVOY_BENCH") == "" {
		t.Skip("set CONVOY_BENCH=1 to run the side-by-side measurement")
	}
	t.Logf("CPU  %d CPUs, GOMAXPROCS %d, load %s, %s", runtime.NumCPU(), runtime.GOMAXPROCS(0), procstat.LoadAvg(), runtime.Version())
}

// workload is one measured thing, done to one target per call.
type workload struct {
	name string
	unit string  // "req/s", "MB/s", "objects/s"
	goal float64 // convoy/bare the issue asks for; 0: none
	run  func(t *target, round int) result
	// value is the figure compared: ops/s or MB/s.
	value func(result) float64
}

// alternate runs w against every target in rounds, in ABBA order, and
// returns the results by target name.
func alternate(t *testing.T, targets []*target, rounds int, w workload) map[string][]result {
	t.Helper()
	out := map[string][]result{}
	for round := range rounds {
		order := slices.Clone(targets)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, tg := range order {
			r := w.run(tg, round)
			if err := r.err(); err != nil {
				t.Fatalf("%s against %s, round %d: %v", w.name, tg.name, round+1, err)
			}
			out[tg.name] = append(out[tg.name], r)
			logRound(t, round, tg, w, r)
		}
	}
	return out
}

// logRound logs one round's figure and CPU times.
func logRound(t *testing.T, round int, tg *target, w workload, r result) {
	t.Helper()
	t.Logf("round %d %-12s %-24s %9.1f %-9s %6.2fs  server %s  client %s  others %s", round+1, tg.name, w.name,
		w.value(r), w.unit, r.elapsed.Seconds(), perOp(r.serverCPU, r), perOp(r.clientCPU, r), share(r))
}

// perOp formats a CPU time per operation.
func perOp(d time.Duration, r result) string {
	if d < 0 || r.ops == 0 {
		return "?"
	}
	return cpuTime((d / time.Duration(r.ops)).Seconds()) + " CPU/op"
}

// cpuTime formats seconds of CPU time.
func cpuTime(s float64) string {
	switch {
	case s < 0:
		return "?"
	case s >= 1:
		return fmt.Sprintf("%.2fs", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.1fms", s*1e3)
	}
	return fmt.Sprintf("%.0fµs", s*1e6)
}

// share formats the part of the machine other processes used.
func share(r result) string {
	if r.otherCPU < 0 {
		return "?"
	}
	return fmt.Sprintf("%.0f%% CPU", 100*r.otherCPU.Seconds()/(r.elapsed.Seconds()*float64(runtime.NumCPU())))
}

// summary logs the medians, convoy/bare (ratio of the medians, and the
// range of the per-round ratios) and the goal.
func summary(t *testing.T, w workload, res map[string][]result) {
	t.Helper()
	summaryOf(t, w, res, "convoy")
}

// summaryOf is summary for the target called name.
func summaryOf(t *testing.T, w workload, res map[string][]result, name string) {
	t.Helper()
	summaryVs(t, w, res, name, "bare")
}

// summaryVs is summaryOf against the baseline target called base.
func summaryVs(t *testing.T, w workload, res map[string][]result, name, base string) {
	t.Helper()
	vals := func(name string, f func(result) float64) []float64 {
		var v []float64
		for _, r := range res[name] {
			v = append(v, f(r))
		}
		return v
	}
	conv, bare := vals(name, w.value), vals(base, w.value)
	ratio := procstat.Median(conv) / procstat.Median(bare)
	var perRound []float64
	for i := range min(len(conv), len(bare)) {
		perRound = append(perRound, conv[i]/bare[i])
	}
	verdict := ""
	if w.goal > 0 {
		verdict = fmt.Sprintf("  goal >= %.2f: met", w.goal)
		if ratio < w.goal {
			verdict = fmt.Sprintf("  goal >= %.2f: MISSED", w.goal)
		}
	}
	cpu := func(name string, f func(result) time.Duration) string {
		return cpuTime(procstat.Median(vals(name, func(r result) float64 {
			if f(r) < 0 || r.ops == 0 {
				return -1
			}
			return f(r).Seconds() / float64(r.ops)
		})))
	}
	server := func(r result) time.Duration { return r.serverCPU }
	client := func(r result) time.Duration { return r.clientCPU }
	others := procstat.Median(vals(name, func(r result) float64 {
		return 100 * r.otherCPU.Seconds() / (r.elapsed.Seconds() * float64(runtime.NumCPU()))
	}))
	t.Logf("RESULT %-26s %s %9.1f %s  %s %9.1f %s  %s/%s %.3f (rounds %.3f..%.3f)%s",
		w.name, name, procstat.Median(conv), w.unit, base, procstat.Median(bare), w.unit, name, base, ratio, slices.Min(perRound), slices.Max(perRound), verdict)
	t.Logf("CPU    %-26s CPU per op: server %s %s, %s %s; client %s with %s, %s with %s; others' median share %.0f%% (%s rounds)",
		w.name, name, cpu(name, server), base, cpu(base, server), cpu(name, client), name, cpu(base, client), base, others, name)
}

// TestAPIRatio: STS GetCallerIdentity, signed per request, from 16
// goroutines over HTTP/1.1 keep-alive (16 connections) and over HTTP/2 (one
// connection), requests/s against convoy and the bare server. Goal: 0.7.
//
// A third server, convoy-quiet, is convoy started with --log-level warn: no
// access log line per request. The harness reads convoy's log through a pipe
// into this (the client's) process, so on this machine its figures show the
// cost of the log line on both sides of the pipe; they are not the goal's.
func TestAPIRatio(t *testing.T) {
	needBench(t)
	s := benchSettings(t)
	e := setup(t)
	quiet := harness.Start(t, harness.Options{Args: []string{"--log-level", "warn"}})
	qpid, _ := strconv.Atoi(quiet.Env["CONVOY_PID"])
	qcfg := quiet.AWSConfig(t)
	qcreds, err := qcfg.Credentials.Retrieve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	qpool := quiet.CAPool(t) // its own CA: its own clients, with the same settings
	targets := append(slices.Clone(e.targets), &target{name: "convoy-quiet", endpoint: quiet.Endpoint, pid: qpid,
		http: map[proto]*http.Client{h1: newHTTPClient(t, qpool, h1), h2: newHTTPClient(t, qpool, h2)}, creds: &qcreds})
	ctx := context.Background()
	for _, p := range []proto{h1, h2} {
		w := workload{name: "GetCallerIdentity/" + string(p), unit: "req/s", goal: 0.7,
			value: result.opsPerSec,
			run: func(tg *target, _ int) result {
				return hammer(tg.pid, workers, 0, s.roundTime, func(int64) (int64, error) {
					return 0, e.callerIdentity(ctx, tg, p)
				})
			}}
		for _, tg := range targets { // warm up: connections, caches
			r := hammer(0, workers, 0, 500*time.Millisecond, func(int64) (int64, error) { return 0, e.callerIdentity(ctx, tg, p) })
			if err := r.err(); err != nil {
				t.Fatalf("%s: %v", tg.name, err)
			}
		}
		res := alternate(t, targets, s.rounds, w)
		summary(t, w, res)
		w.goal = 0
		summaryOf(t, w, res, "convoy-quiet")
	}
}

// TestS3LargeRatio: one PUT of a 1 GiB object (SSE-KMS, UNSIGNED-PAYLOAD,
// streamed) and one GET of it, MB/s against convoy and the bare server, over
// HTTP/1.1 (as the aws CLI) and HTTP/2. Goals: GET 0.7, PUT 0.6. Then it
// times the pieces of convoy's PUT and GET paths in-process, to say where
// the time goes.
func TestS3LargeRatio(t *testing.T) {
	needBench(t)
	s := benchSettings(t)
	e := setup(t)
	// bare-durable: the bare server, but its PUT lands durably on the disk
	// convoy's data directory is on (see bareHandler): the ceiling for a
	// store that acknowledges only durable bytes, on this machine.
	durDir := filepath.Join(e.dataDir, "bare-durable")
	if err := os.Mkdir(durDir, 0o700); err != nil {
		t.Fatal(err)
	}
	bd := startBare(t, e.pemPath, bareDirEnv+"="+durDir)
	e.targets = append(e.targets, &target{name: "bare-durable", endpoint: "https://" + bd.addr, pid: bd.pid,
		http: e.targets[0].http})
	ctx := context.Background()
	key := fmt.Sprintf("large/%dMiB", s.large>>20)
	patternETag(s.large) // once, before anything is timed
	for _, p := range []proto{h1, h2} {
		put := workload{name: "PUT " + sizeName(s.large) + "/" + string(p), unit: "MB/s", goal: 0.6, value: result.mbPerSec,
			run: func(tg *target, _ int) result {
				return hammer(tg.pid, 1, 1, 0, func(int64) (int64, error) { return e.putLarge(ctx, tg, p, key, s.large) })
			}}
		get := workload{name: "GET " + sizeName(s.large) + "/" + string(p), unit: "MB/s", goal: 0.7, value: result.mbPerSec,
			run: func(tg *target, _ int) result {
				return hammer(tg.pid, 1, 1, 0, func(int64) (int64, error) { return e.getLarge(ctx, tg, p, key, s.large) })
			}}
		// A round is a PUT then a GET of the same object, so that every
		// GET reads what the PUT before it wrote.
		putRes, getRes := map[string][]result{}, map[string][]result{}
		for round := range s.rounds {
			order := slices.Clone(e.targets)
			if round%2 == 1 {
				slices.Reverse(order)
			}
			for _, tg := range order {
				for _, x := range []struct {
					w   workload
					out map[string][]result
				}{{put, putRes}, {get, getRes}} {
					r := x.w.run(tg, round)
					if err := r.err(); err != nil {
						t.Fatalf("%s against %s, round %d: %v", x.w.name, tg.name, round+1, err)
					}
					x.out[tg.name] = append(x.out[tg.name], r)
					logRound(t, round, tg, x.w, r)
				}
			}
		}
		summary(t, put, putRes)
		goal := put.goal
		put.goal = 0
		summaryVs(t, put, putRes, "convoy", "bare-durable")
		summaryVs(t, put, putRes, "bare-durable", "bare")
		put.goal = goal
		summary(t, get, getRes)
	}
	logPathCosts(t)
}

// TestS3SmallPutRatio: 4 KiB PutObject with the AWS SDK's S3 client from 16
// goroutines (HTTP/2), objects/s against convoy and the bare server. No goal
// is set: convoy makes every object durable before it answers (an fsync of
// the object file, one of its directory, a SQLite commit with its WAL
// fsync), the bare server discards it. Then it times those per-object costs
// in-process.
func TestS3SmallPutRatio(t *testing.T) {
	needBench(t)
	s := benchSettings(t)
	e := setup(t)
	ctx := context.Background()
	w := workload{name: "PutObject 4KiB/sdk-h2", unit: "objects/s", value: result.opsPerSec,
		run: func(tg *target, round int) result {
			return hammer(tg.pid, workers, 0, s.roundTime, func(i int64) (int64, error) {
				return smallSize, e.putSmall(ctx, tg, fmt.Sprintf("small/r%d/%d", round, i))
			})
		}}
	summary(t, w, alternate(t, e.targets, s.rounds, w))
	logSmallCosts(t)
}

func sizeName(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%dGiB", n>>30)
	}
	return fmt.Sprintf("%dMiB", n>>20)
}
