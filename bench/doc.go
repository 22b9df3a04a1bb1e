// Package bench measures convoy's TLS handshake throughput against a bare Go
// crypto/tls server that serves the very same certificate with the very same
// TLS parameters (tlsconf.Modern), both running as separate processes.
//
// Everything lives in the _test.go files:
//
//	go test -run '^$' -bench Handshake -count 5 ./bench/   # Go benchmarks, for benchstat
//	CONVOY_BENCH=1 go test -run TestHandshakeRatio -v ./bench/   # alternating rounds, prints convoy/bare
//	bench/run.sh                                           # both, plus benchstat when it can be had
//
// Plain `go test ./bench/` runs no measurement. RESULTS.md records a run.
package bench
