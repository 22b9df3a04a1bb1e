// Package internode measures what inter-node encryption costs: bulk TCP
// throughput, connection set-up latency and CPU per gigabyte between two
// network namespaces on a Linux bridge, built as the executor builds a
// job's network (internal/mesh/meshtest), in four configurations run side
// by side in one process:
//
//	plain    iperf3 between the namespaces, nothing in between
//	convoy   the same through the real mesh: `convoy mesh-agent` in each
//	         namespace under the real nftables rules (internal/mesh)
//	stunnel  the same through Debian's stunnel4 (TLS 1.3, mutual
//	         authentication), client in one namespace, server in the other
//	go-tls   the ceiling of Go's crypto/tls on this machine: one process
//	         writing to itself over loopback, memory to memory
//
// iperf3 drives plain, convoy and stunnel, with one stream and with four.
// Rounds alternate between configurations so that drift in the load of
// the shared machine falls on all of them. The figures are ratios to
// plain, and the goals of the issue: convoy/plain ≥ 0.9 × go-tls/plain,
// convoy ≥ 2 × stunnel.
//
// Everything lives in the _test.go files, and runs only with CONVOY_BENCH=1:
//
//	CONVOY_BENCH=1 go test -run Internode -v -count=1 ./bench/internode/
//	bench/internode/run.sh      # the same, as RESULTS.md quotes it
//
// It needs root, iproute2, nsenter, iperf3 and stunnel4.
package internode
