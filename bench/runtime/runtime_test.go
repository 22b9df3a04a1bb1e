// Package runtime measures InvokeEndpoint through convoy's runtime router
// against calling the model container directly, in the same run, on the
// same container:
//
//   - convoy: POST /endpoints/bench/invocations over TLS (tlsconf.Modern,
//     HTTP/1.1 keep-alive), SigV4-signed per request with the admin key as
//     an AWS SDK signs it (the payload's SHA-256 included);
//   - direct: POST http://<container>:8080/invocations from this process,
//     which runs in convoy's network namespace, over plain HTTP keep-alive.
//
// The container is the trainer image in "serve" mode with SERVE_MODE=echo:
// it answers every invocation with its body, so a 1 MiB payload crosses
// each hop twice. Two workloads per payload size (1 KiB, 1 MiB): latency,
// one request at a time (p50, p99), and throughput, several goroutines
// (requests/s). Rounds alternate the targets (ABBA) so that drift in the
// load of the shared machine falls on both.
//
//	CONVOY_BENCH=1 go test -run Ratio -v -count=1 ./bench/runtime/   # the side-by-side figures
//	go test -run '^$' -bench InProcess -cpuprofile cpu.out ./bench/runtime/   # where convoy's time goes
//	bench/runtime/run.sh                                              # both, as RESULTS.md quotes them
//
// Plain `go test ./bench/runtime/` measures nothing. It needs root and runc,
// as convoy's executor does.
package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"convoy/internal/executor"
	"convoy/internal/tlsconf"
	"convoy/test/e2e/harness"

	"convoy/bench/procstat"
)

const endpointName = "bench"

// target is one way to invoke the model.
type target struct {
	name string
	pid  int // the server process whose CPU is counted (convoy), 0: none
	do   func(ctx context.Context, body []byte) error
}

// env is a running convoy with the bench endpoint in service.
type env struct {
	c         *harness.Convoy
	container netip.AddrPort // the instance's port 8080
	cpid      int            // the container's server process
	convoy    *target
	direct    *target
}

func needBench(t *testing.T) {
	t.Helper()
	if testing.Short() || os.Getenv("CONVOY_BENCH") == "" {
		t.Skip("set CONVOY_BENCH=1 to run the side-by-side measurement")
	}
	t.Logf("CPU  %d CPUs, GOMAXPROCS %d, load %s, %s", goruntime.NumCPU(), goruntime.GOMAXPROCS(0), procstat.LoadAvg(), goruntime.Version())
}

// setup deploys the echo model on c and returns both targets.
func setup(tb testing.TB, c *harness.Convoy, pid int) *env {
	tb.Helper()
	img := harness.GoImage(tb, "../../test/e2e/testdata/trainer", "trainer")
	if out, err := exec.Command(harness.Binary(tb), "images", "import", "--data", c.DataDir, img, "trainer:1").CombinedOutput(); err != nil {
		tb.Fatalf("images import: %v\n%s", err, out)
	}
	cli := harness.Tool(tb, "aws")
	for _, args := range [][]string{
		{"sagemaker", "create-model", "--model-name", "echo", "--enable-network-isolation",
			"--primary-container", `{"Image":"trainer:1","Environment":{"SERVE_MODE":"echo"}}`},
		{"sagemaker", "create-endpoint-config", "--endpoint-config-name", "echo", "--production-variants",
			`[{"VariantName":"AllTraffic","ModelName":"echo","InitialInstanceCount":1,"InstanceType":"ml.m5.large"}]`},
		{"sagemaker", "create-endpoint", "--endpoint-name", endpointName, "--endpoint-config-name", "echo"},
	} {
		if r := c.AWS(tb, cli, args); r.Err != nil {
			tb.Fatalf("aws %v: %v\n%s", args, r.Err, r.Stderr)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := c.AWS(tb, cli, []string{"sagemaker", "describe-endpoint", "--endpoint-name", endpointName, "--query", "EndpointStatus", "--output", "text"})
		if s := strings.TrimSpace(r.Stdout); s == "InService" {
			break
		} else if s != "Creating" || time.Now().After(deadline) {
			tb.Fatalf("endpoint: %s %v %s", s, r.Err, r.Stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e := &env{c: c}
	e.container, e.cpid = instance(tb, c.DataDir)
	e.convoy = &target{name: "convoy", pid: pid, do: e.viaConvoy(tb)}
	e.direct = &target{name: "direct", do: e.directly()}
	for _, tg := range []*target{e.convoy, e.direct} {
		for _, n := range []int{1 << 10, 1 << 20} {
			if err := tg.do(context.Background(), payload(n)); err != nil {
				tb.Fatalf("%s, %d bytes: %v", tg.name, n, err)
			}
		}
	}
	return e
}

// instance finds the endpoint's one container in the executor's state: its
// address (host .2 of the job's /24) and the pid of its process.
func instance(tb testing.TB, dataDir string) (netip.AddrPort, int) {
	tb.Helper()
	jobs, _ := filepath.Glob(filepath.Join(dataDir, "executor", "jobs", "ep-*", "job.json"))
	if len(jobs) != 1 {
		tb.Fatalf("want one endpoint container, found %v", jobs)
	}
	var m struct {
		Subnet netip.Prefix `json:"subnet"`
	}
	b, err := os.ReadFile(jobs[0])
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		tb.Fatal(err)
	}
	a := m.Subnet.Addr().As4()
	a[3] = 2
	pidb, err := os.ReadFile(filepath.Join(filepath.Dir(jobs[0]), "algo-1", "pid"))
	if err != nil {
		tb.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	return netip.AddrPortFrom(netip.AddrFrom4(a), 8080), pid
}

// payload is n pseudo-random bytes, the same for every call with n.
func payload(n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{'r', 't'}).Read(b)
	return b
}

// viaConvoy invokes through the router as an SDK does: TLS 1.3, HTTP/1.1
// keep-alive, each request signed with its payload hash.
func (e *env) viaConvoy(tb testing.TB) func(context.Context, []byte) error {
	host, _, _ := strings.Cut(e.c.Addr, ":")
	tr := &http.Transport{TLSClientConfig: tlsconf.Client(tlsconf.Modern, e.c.CAPool(tb), host),
		MaxIdleConnsPerHost: 64, WriteBufferSize: 64 << 10, ReadBufferSize: 64 << 10}
	tb.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	creds := aws.Credentials{AccessKeyID: e.c.Env["AWS_ACCESS_KEY_ID"], SecretAccessKey: e.c.Env["AWS_SECRET_ACCESS_KEY"]}
	region := e.c.Env["AWS_DEFAULT_REGION"]
	signer := v4.NewSigner()
	u := e.c.Endpoint + "/endpoints/" + endpointName + "/invocations"
	return func(ctx context.Context, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		sum := sha256.Sum256(body)
		if err := signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "sagemaker", region, time.Now()); err != nil {
			return err
		}
		return roundTrip(client, req, len(body))
	}
}

// directly invokes the container as the router does, from the same
// namespace, without TLS or signature.
func (e *env) directly() func(context.Context, []byte) error {
	// Marked as the router's sockets are: the job's firewall admits no
	// other connection to the container's port.
	d := &net.Dialer{Timeout: 5 * time.Second, Control: executor.DialExposed}
	tr := &http.Transport{Proxy: nil, DialContext: d.DialContext, MaxIdleConnsPerHost: 64, DisableCompression: true,
		WriteBufferSize: 64 << 10, ReadBufferSize: 64 << 10}
	client := &http.Client{Transport: tr, Timeout: time.Minute}
	u := "http://" + e.container.String() + "/invocations"
	return func(ctx context.Context, body []byte) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/octet-stream")
		return roundTrip(client, req, len(body))
	}
}

// roundTrip sends req and checks that the echo came back whole.
func roundTrip(client *http.Client, req *http.Request, n int) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	got, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || got != int64(n) {
		return fmt.Errorf("status %s, %d bytes back of %d", resp.Status, got, n)
	}
	return nil
}

// result is one round of one workload on one target.
type result struct {
	ops      int64
	elapsed  time.Duration
	lat      []time.Duration // latency rounds: every request's
	server   time.Duration   // CPU of the server process (convoy), -1 unknown
	model    time.Duration   // CPU of the container's process
	client   time.Duration   // CPU of this process
	others   time.Duration   // CPU the rest of the machine used: the noise
	firstErr error
}

func (r result) perSec() float64 { return float64(r.ops) / r.elapsed.Seconds() }

func (r result) pct(p float64) time.Duration {
	s := slices.Sorted(slices.Values(r.lat))
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// run calls tg.do with body from workers goroutines for d, timing each
// request when workers is 1.
func run(tg *target, cpid, workers int, d time.Duration, body []byte) result {
	ctx := context.Background()
	s0, m0, c0, b0 := cpuOf(tg.pid), cpuOf(cpid), procstat.SelfCPU(), busy()
	var ops atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := tg.do(ctx, body); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				if workers == 1 {
					mine = append(mine, time.Since(t0))
				}
				ops.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	r := result{ops: ops.Load(), elapsed: time.Since(start), lat: lat, firstErr: firstErr, client: procstat.SelfCPU() - c0, server: -1, model: -1}
	if tg.pid != 0 {
		r.server = cpuOf(tg.pid) - s0
	}
	if cpid != 0 {
		r.model = cpuOf(cpid) - m0
	}
	r.others = busy() - b0 - r.client - max(r.server, 0) - max(r.model, 0)
	return r
}

// share is the part of the machine r.others used, in percent.
func (r result) share() float64 {
	return 100 * r.others.Seconds() / (r.elapsed.Seconds() * float64(goruntime.NumCPU()))
}

func settings(t *testing.T) (rounds int, roundTime time.Duration, workers int) {
	rounds, roundTime, workers = 5, 3*time.Second, 8
	if v, err := strconv.Atoi(os.Getenv("CONVOY_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	if v, err := time.ParseDuration(os.Getenv("CONVOY_BENCH_ROUND_TIME")); err == nil && v > 0 {
		roundTime = v
	}
	if v, err := strconv.Atoi(os.Getenv("CONVOY_BENCH_WORKERS")); err == nil && v > 0 {
		workers = v
	}
	return
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// TestRuntimeRatio is the side-by-side measurement RESULTS.md quotes. It
// asserts no figure: only a failed invocation fails it.
func TestRuntimeRatio(t *testing.T) {
	needBench(t)
	rounds, roundTime, workers := settings(t)
	c := harness.Start(t, harness.Options{})
	t.Cleanup(func() { c.Stop() }) // stops the endpoint's container before the data directory goes
	pid, _ := strconv.Atoi(c.Env["CONVOY_PID"])
	e := setup(t, c, pid)
	t.Logf("container %s (pid %d), convoy pid %d; %d rounds of %s, throughput with %d goroutines", e.container, e.cpid, pid, rounds, roundTime, workers)
	alternate(t, e.convoy, e.direct, func(*target) int { return e.cpid }, func(label, kind string, res map[string][]result) {
		summarize(t, label, kind, res)
	})
}

// alternate runs every workload — 1 KiB and 1 MiB payloads, latency (one
// request at a time) and throughput (settings' goroutines) — on targets a
// and b in alternating rounds (ABBA), so that drift in the load of the
// shared machine falls on both, logs each round and hands each workload's
// results, by target name, to done. cpid gives the process of a target's
// model container, whose CPU is counted.
func alternate(t *testing.T, a, b *target, cpid func(*target) int, done func(label, kind string, res map[string][]result)) {
	t.Helper()
	rounds, roundTime, workers := settings(t)
	for _, size := range []int{1 << 10, 1 << 20} {
		body := payload(size)
		label := map[int]string{1 << 10: "1KiB", 1 << 20: "1MiB"}[size]
		for _, kind := range []string{"latency", "throughput"} {
			w := 1
			if kind == "throughput" {
				w = workers
			}
			res := map[string][]result{}
			for round := range rounds {
				order := []*target{a, b}
				if round%2 == 1 {
					slices.Reverse(order)
				}
				for _, tg := range order {
					r := run(tg, cpid(tg), w, roundTime, body)
					if r.firstErr != nil {
						t.Fatalf("%s %s %s round %d: %v", label, kind, tg.name, round+1, r.firstErr)
					}
					res[tg.name] = append(res[tg.name], r)
					t.Logf("round %d %-7s %-4s %-10s %8.0f req/s  p50 %7.0fµs  p99 %7.0fµs  CPU/op: convoy %s, model %s, client %s; others %.0f%%",
						round+1, tg.name, label, kind, r.perSec(), us(r.pct(0.5)), us(r.pct(0.99)), perOp(r.server, r), perOp(r.model, r), perOp(r.client, r), r.share())
				}
			}
			done(label, kind, res)
		}
	}
}

func perOp(d time.Duration, r result) string {
	if d < 0 || r.ops == 0 {
		return "?"
	}
	return fmt.Sprintf("%.0fµs", us(d)/float64(r.ops))
}

// summarize logs the medians over rounds and convoy against direct.
func summarize(t *testing.T, label, kind string, res map[string][]result) {
	t.Helper()
	med := func(name string, f func(result) float64) float64 {
		var v []float64
		for _, r := range res[name] {
			v = append(v, f(r))
		}
		return procstat.Median(v)
	}
	cpu := func(name string, f func(result) time.Duration) float64 {
		return med(name, func(r result) float64 { return us(f(r)) / float64(r.ops) })
	}
	server := func(r result) time.Duration { return r.server }
	model := func(r result) time.Duration { return r.model }
	client := func(r result) time.Duration { return r.client }
	if kind == "latency" {
		p50c, p50d := med("convoy", func(r result) float64 { return us(r.pct(0.5)) }), med("direct", func(r result) float64 { return us(r.pct(0.5)) })
		p99c, p99d := med("convoy", func(r result) float64 { return us(r.pct(0.99)) }), med("direct", func(r result) float64 { return us(r.pct(0.99)) })
		verdict := "met"
		if p50c-p50d > 500 {
			verdict = fmt.Sprintf("MISSED by %.0fµs", p50c-p50d-500)
		}
		t.Logf("RESULT %s latency: p50 convoy %.0fµs direct %.0fµs (added %.0fµs; goal <= 500µs: %s), p99 convoy %.0fµs direct %.0fµs",
			label, p50c, p50d, p50c-p50d, verdict, p99c, p99d)
	} else {
		rc, rd := med("convoy", result.perSec), med("direct", result.perSec)
		verdict := "met"
		if rc/rd < 0.7 {
			verdict = "MISSED"
		}
		t.Logf("RESULT %s throughput: convoy %.0f req/s, direct %.0f req/s, convoy/direct %.2f (goal >= 0.70: %s)", label, rc, rd, rc/rd, verdict)
	}
	t.Logf("CPU    %s %s per invocation: convoy process %.0fµs; model %.0fµs via convoy, %.0fµs direct; client %.0fµs via convoy, %.0fµs direct",
		label, kind, cpu("convoy", server), cpu("convoy", model), cpu("direct", model), cpu("convoy", client), cpu("direct", client))
}

// BenchmarkInProcess invokes the echo model through an in-process convoy,
// one request at a time, for profiles:
//
//	go test -run '^$' -bench 'InProcess/1KiB' -benchtime 20000x -cpuprofile cpu.out ./bench/runtime/
func BenchmarkInProcess(b *testing.B) {
	e := setup(b, harness.StartInProcess(b), 0)
	for _, size := range []int{1 << 10, 1 << 20} {
		body := payload(size)
		b.Run(map[int]string{1 << 10: "1KiB", 1 << 20: "1MiB"}[size], func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if err := e.convoy.do(context.Background(), body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInvoke: one request at a time against `convoy up` and the
// container directly, for benchstat.
func BenchmarkInvoke(b *testing.B) {
	c := harness.Start(b, harness.Options{})
	b.Cleanup(func() { c.Stop() })
	pid, _ := strconv.Atoi(c.Env["CONVOY_PID"])
	e := setup(b, c, pid)
	for _, size := range []int{1 << 10, 1 << 20} {
		body := payload(size)
		for _, tg := range []*target{e.convoy, e.direct} {
			b.Run(fmt.Sprintf("%s/%s", map[int]string{1 << 10: "1KiB", 1 << 20: "1MiB"}[size], tg.name), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					if err := tg.do(context.Background(), body); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// cpuOf and busy are procstat's figures, 0 where they cannot be read.
func cpuOf(pid int) time.Duration { d, _ := procstat.ProcCPU(pid); return d }
func busy() time.Duration         { d, _ := procstat.MachineBusy(); return d }
