// Package api measures convoy's API request rate and S3 throughput against a
// bare Go HTTPS server: the test binary re-executed as a net/http server on
// the same certificate and the same tlsconf.Modern parameters, whose handler
// authenticates nothing, stores nothing and answers at once. The bare server
// is the ceiling Go's TLS and net/http set on this machine; convoy's figures
// are read as a ratio against it.
//
// Four workloads, each against both servers, both in their own process:
//
//   - GetCallerIdentity: the STS query POST, SigV4-signed per request with
//     the admin key, from 16 goroutines (HTTP/1.1 keep-alive and HTTP/2).
//   - PUT of 1 GiB: a raw signed PUT with UNSIGNED-PAYLOAD and SSE-KMS,
//     streamed from a generator (the aws CLI sends UNSIGNED-PAYLOAD too).
//   - GET of that 1 GiB, streamed to io.Discard.
//   - PUT of 4 KiB objects with the AWS SDK's S3 client, 16 goroutines.
//
// Everything lives in the _test.go files:
//
//	go test -run '^$' -bench . -count 5 ./bench/api/       # Go benchmarks, for benchstat
//	CONVOY_BENCH=1 go test -run Ratio -v -count=1 ./bench/api/   # alternating rounds, ratios
//	bench/api/run.sh                                        # the latter, as RESULTS.md quotes it
//
// Plain `go test ./bench/api/` runs no measurement. Two more kinds of
// benchmark explain a low ratio, since convoy has no pprof endpoint:
// BenchmarkPutPath, BenchmarkGetPath and BenchmarkSmallPutPath time the
// pieces of convoy's S3 data path one by one (MD5 for the ETag, the sealed
// writer, TLS record protection, the disk, SQLite commits), and
// BenchmarkInProcess runs daemon.Run inside the test binary so that
// -cpuprofile profiles convoy's own code under each workload.
package api
