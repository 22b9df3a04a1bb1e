#!/usr/bin/env bash
# API request rate and S3 throughput, side by side: convoy (`convoy up`,
# modern profile) against a bare Go HTTPS server on the same certificate and
# tlsconf.Modern parameters, each in its own process, on this machine.
#
#   bench/api/run.sh                          # alternating rounds, then a CPU profile
#   ROUNDS=8 ROUND_TIME=5s bench/api/run.sh
#   LARGE_MIB=256 bench/api/run.sh            # a smaller large object, for a quick look
#   PROFILE=0 bench/api/run.sh                # rounds only
#
# The rounds (TestAPIRatio, TestS3LargeRatio, TestS3SmallPutRatio) are the
# figures to quote: they alternate convoy and bare (ABBA), so drift in the
# load of the shared machine falls on both, and they log the medians and
# convoy/bare. The profile step runs convoy's code in-process under
# GetCallerIdentity load (BenchmarkInProcess) and lists where its CPU goes.
set -euo pipefail

cd "$(dirname "$0")/../.."
out=$(mktemp -d "${TMPDIR:-/tmp}/convoy-bench-api.XXXXXX")

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs  load $(cut -d' ' -f1-3 /proc/loadavg)  $(go version | cut -d' ' -f3-)"
echo "== outputs kept in $out"
echo
echo "== 1. alternating rounds: CONVOY_BENCH=1 go test -run Ratio -v -count=1 -timeout 30m ./bench/api/"
CONVOY_BENCH=1 CONVOY_BENCH_ROUNDS=${ROUNDS:-5} CONVOY_BENCH_ROUND_TIME=${ROUND_TIME:-3s} \
	CONVOY_BENCH_LARGE_MIB=${LARGE_MIB:-1024} \
	go test -run Ratio -v -count=1 -timeout 30m ./bench/api/ | tee "$out/ratio.txt"

if [[ ${PROFILE:-1} != 0 ]]; then
	echo
	echo "== 2. profile: go test -run '^\$' -bench 'InProcess/GetCallerIdentity\$' -benchtime 20000x -cpuprofile ./bench/api/"
	go test -run '^$' -bench 'InProcess/GetCallerIdentity$' -benchtime 20000x \
		-cpuprofile "$out/api.cpu" -o "$out/api.test" ./bench/api/ | tee "$out/profile.txt"
	# The frames that say where a request's server time goes; the rest of
	# the profile (client, runtime) is in $out/api.cpu.
	go tool pprof -top -cum "$out/api.test" "$out/api.cpu" 2>/dev/null | tee "$out/pprof.txt" | grep -E \
		'Total samples|net/http\.\(\*conn\)\.serve$|withRequestLog\.func2$|auth\.\(\*Authenticator\)\.Authenticate$|iam\.\(\*Store\)\.(GetUser|LookupAccessKey)$|sqlite\.\(\*conn\)\.(query|prepareV2)$|sigv4\.\(\*Verifier\)\.Verify$|sts\.\(\*Service\)\.ServeHTTP$|slog\.\(\*Logger\)\.log$' || true
fi

echo
echo "== summary: convoy/bare (goals: GetCallerIdentity >= 0.70, GET >= 0.70, PUT >= 0.60)"
grep -E 'RESULT|CPU |PATH|MODEL' "$out/ratio.txt" | sed -E 's/^ *[a-z_]+_test\.go:[0-9]+: //'
