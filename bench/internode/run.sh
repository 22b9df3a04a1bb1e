#!/usr/bin/env bash
# What inter-node encryption costs, side by side on this machine: bulk TCP
# throughput (iperf3, 1 and 4 streams), connection set-up latency and CPU
# per GB between two network namespaces on a bridge, plain, through
# convoy's mesh (the real `convoy mesh-agent` under the real rules),
# through stunnel4, and the ceiling of Go's crypto/tls on this machine.
#
#   sudo bench/internode/run.sh
#   ROUNDS=8 ROUND_TIME=10s CONNS=2000 sudo bench/internode/run.sh
#
# Rounds alternate the configurations (ABCD DCBA), so that drift in the
# load of the shared machine falls on all of them. Needs root, iperf3,
# stunnel4, iproute2 and nsenter.
set -euo pipefail

cd "$(dirname "$0")/../.."
out=$(mktemp -d "${TMPDIR:-/tmp}/convoy-bench-internode.XXXXXX")

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs  load $(cut -d' ' -f1-3 /proc/loadavg)  $(go version | cut -d' ' -f3-)  $(uname -r)"
echo "== $(iperf3 --version | head -n 1); $(stunnel4 -version 2>&1 | grep -m1 "^stunnel"); $(stunnel4 -version 2>&1 | grep -m1 "^Running")"
echo "== outputs kept in $out"
echo
echo "== CONVOY_BENCH=1 go test -run TestInternodeRatio -v -count=1 -timeout 60m ./bench/internode/"
CONVOY_BENCH=1 CONVOY_BENCH_ROUNDS=${ROUNDS:-5} CONVOY_BENCH_ROUND_TIME=${ROUND_TIME:-5s} CONVOY_BENCH_CONNS=${CONNS:-1000} \
	go test -run '^TestInternodeRatio$' -v -count=1 -timeout 60m ./bench/internode/ | tee "$out/ratio.txt"

echo
echo "== summary (goals: convoy/plain >= 0.9 x go-tls/plain; convoy >= 2 x stunnel)"
grep -E 'RESULT|GOAL|LATENCY|CPU |OTHER' "$out/ratio.txt" | sed -E 's/^ *[a-z_]+_test\.go:[0-9]+: //'
