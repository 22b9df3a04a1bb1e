#!/usr/bin/env bash
# Side-by-side TLS handshake throughput: convoy (`convoy up`, modern profile)
# against a bare crypto/tls server serving the same certificate with the same
# tlsconf.Modern parameters, both in their own process, on this machine.
#
#   bench/run.sh                  # alternating rounds + go test -bench (-count 5)
#   COUNT=10 ROUNDS=8 ROUND_TIME=3s bench/run.sh
#   SKIP_BENCH=1 bench/run.sh     # alternating rounds only
#
# The alternating rounds (TestHandshakeRatio) are the figure to quote: they
# interleave convoy and bare (ABBA), so drift in machine load falls on both.
# `go test -count` repeats each sub-benchmark back to back, which is fine for
# benchstat but more exposed to drift on a shared machine.
set -euo pipefail

cd "$(dirname "$0")/.."
count=${COUNT:-5}
out=$(mktemp -d "${TMPDIR:-/tmp}/convoy-bench.XXXXXX")

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs  load $(cut -d' ' -f1-3 /proc/loadavg)  $(go version | cut -d' ' -f3-)"
echo "== outputs kept in $out"
echo
echo "== 1. alternating rounds: CONVOY_BENCH=1 go test -run TestHandshakeRatio -v -count=1 ./bench/"
CONVOY_BENCH=1 CONVOY_BENCH_ROUNDS=${ROUNDS:-5} CONVOY_BENCH_ROUND_TIME=${ROUND_TIME:-2s} \
	go test -run '^TestHandshakeRatio$' -v -count=1 -timeout 30m ./bench/ | tee "$out/ratio.txt"

if [[ -z ${SKIP_BENCH:-} ]]; then
	echo
	echo "== 2. benchmarks: go test -run '^\$' -bench '^BenchmarkHandshake\$' -count $count ./bench/"
	go test -run '^$' -bench '^BenchmarkHandshake$' -count "$count" -timeout 30m ./bench/ | tee "$out/bench.txt"

	# benchstat can only put the servers side by side when the sub-benchmark
	# names are key=value pairs.
	sed -E 's#^BenchmarkHandshake/(full|resumed)/(convoy|bare-go)#BenchmarkHandshake/mode=\1/server=\2#' \
		"$out/bench.txt" >"$out/bench-keyed.txt"
	echo
	echo "== benchstat (baseline: bare-go)"
	# Through the Go module proxy; skipped when it cannot be had (offline).
	if go run golang.org/x/perf/cmd/benchstat@latest -col '/server@(bare-go convoy)' "$out/bench-keyed.txt" \
		>"$out/benchstat.txt" 2>"$out/benchstat.err"; then
		cat "$out/benchstat.txt"
	else
		echo "benchstat unavailable, skipped: $(tail -n 1 "$out/benchstat.err")"
	fi

	echo
	echo "== benchmarks: mean handshakes/s and convoy/bare"
	awk '
		/^BenchmarkHandshake\// {
			split($1, p, "/"); mode = p[2]; srv = p[3]; sub(/-[0-9]+$/, "", srv)
			for (i = 2; i < NF; i++) if ($(i + 1) == "handshakes/s") { sum[mode, srv] += $i; n[mode, srv]++ }
		}
		END {
			split("full resumed", modes, " ")
			for (k = 1; k <= 2; k++) {
				m = modes[k]
				if (!n[m, "convoy"] || !n[m, "bare-go"]) continue
				c = sum[m, "convoy"] / n[m, "convoy"]; b = sum[m, "bare-go"] / n[m, "bare-go"]
				printf "BENCH  %-7s convoy %6.0f handshakes/s  bare-go %6.0f handshakes/s  convoy/bare %.3f\n", m, c, b, c / b
			}
		}' "$out/bench.txt"
fi

echo
echo "== alternating rounds: convoy/bare (goal >= 0.80)"
grep -E 'RESULT|QUIET|CPU ' "$out/ratio.txt" | sed -E 's/^ *handshake_test.go:[0-9]+: //'
