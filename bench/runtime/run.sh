#!/usr/bin/env bash
# InvokeEndpoint through convoy's runtime router (TLS, SigV4) against the
# model container called directly (plain HTTP from convoy's namespace),
# same container, same run, on this machine. Needs root and runc.
#
#   bench/runtime/run.sh                      # alternating rounds, then CPU profiles
#   ROUNDS=8 ROUND_TIME=5s bench/runtime/run.sh
#   PROFILE=0 bench/runtime/run.sh            # rounds only
#
# The rounds (TestRuntimeRatio) are the figures to quote. The profile step
# runs convoy's code in-process (BenchmarkInProcess) under one-at-a-time
# invocations of 1 KiB and 1 MiB and lists where the CPU goes.
set -euo pipefail

cd "$(dirname "$0")/../.."
out=$(mktemp -d "${TMPDIR:-/tmp}/convoy-bench-runtime.XXXXXX")

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs  load $(cut -d' ' -f1-3 /proc/loadavg)  $(go version | cut -d' ' -f3-)"
echo "== outputs kept in $out"
echo
echo "== 1. alternating rounds: CONVOY_BENCH=1 go test -run Ratio -v -count=1 ./bench/runtime/"
CONVOY_BENCH=1 CONVOY_BENCH_ROUNDS=${ROUNDS:-5} CONVOY_BENCH_ROUND_TIME=${ROUND_TIME:-3s} \
	go test -run Ratio -v -count=1 -timeout 30m ./bench/runtime/ | tee "$out/ratio.txt"

if [[ ${PROFILE:-1} != 0 ]]; then
	for size in 1KiB 1MiB; do
		n=20000
		[[ $size == 1MiB ]] && n=500
		echo
		echo "== 2. profile: go test -run '^\$' -bench 'InProcess/$size\$' -benchtime ${n}x -cpuprofile ./bench/runtime/"
		go test -run '^$' -bench "InProcess/$size\$" -benchtime "${n}x" \
			-cpuprofile "$out/$size.cpu" -o "$out/runtime.test" ./bench/runtime/ | tee "$out/profile-$size.txt"
		go tool pprof -top -cum "$out/runtime.test" "$out/$size.cpu" 2>/dev/null | tee "$out/pprof-$size.txt" | grep -E \
			'Total samples|net/http\.\(\*conn\)\.serve$|withRequestLog\.func2$|auth\.\(\*Authenticator\)\.Authenticate$|sigv4\.\(\*Verifier\)\.Verify$|runtime\.\(\*Router\)\.(invoke|forward)$|iam\.\(\*Store\)\.Authorize$|slog\.\(\*Logger\)\.LogAttrs$|sha256\.block$|gcm\.gcmAes(Enc|Dec)$|linux\.Syscall6$|viaConvoy\.func1$' || true
	done
fi

echo
echo "== summary (goals: added p50 <= 0.5 ms, throughput >= 0.7x direct)"
grep -E 'RESULT|CPU ' "$out/ratio.txt" | sed -E 's/^ *[a-z_]+_test\.go:[0-9]+: //'
