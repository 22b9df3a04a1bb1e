#!/usr/bin/env bash
# Runs every convoy test on a Debian machine: installs the real clients the
# end-to-end tests drive (when missing), then vets and tests the whole module.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

need=()
command -v testssl >/dev/null || need+=(testssl.sh)
command -v sslscan >/dev/null || need+=(sslscan)
[ -x /usr/bin/aws ] || need+=(awscli)
python3 -c 'import boto3' 2>/dev/null || need+=(python3-boto3)
command -v tshark >/dev/null || need+=(tshark)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v runc >/dev/null || need+=(runc)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v faketime >/dev/null || need+=(faketime)
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test tools: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

go vet ./...
go test -count=1 -timeout 40m ./...

# Every fuzz target also runs a few thousand real fuzzing iterations (go test
# runs only their seed corpus); a crasher fails the run and is kept in
# testdata/. Counts, not seconds: a time-based -fuzztime can fail spuriously
# on Go 1.26 (golang/go#75804).
fuzztime="${CONVOY_FUZZTIME:-3000x}"
for pkg in $(go list ./...); do
  for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    echo "fuzz $pkg $target ($fuzztime)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 200x "$pkg" 2>&1 | tail -n 20
  done
done
