#!/usr/bin/env bash
# Runs the Temporal interop suite (see README.md). Extra arguments go to `go test`, e.g. -v.
# NEXUS_GATEWAY_BIN: use this gateway binary instead of building target/debug/nexus-gateway.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
start=$SECONDS

# go.temporal.io/server v1.32.2 needs a newer Go than 1.26; the go command fetches this one.
export GOTOOLCHAIN=go1.27.3

if [[ -z "${NEXUS_GATEWAY_BIN:-}" ]]; then
  (cd "$root" && cargo build -p nexus-gateway --locked)
  export NEXUS_GATEWAY_BIN="$root/target/debug/nexus-gateway"
fi

status=0
(cd "$here" && go test -count=1 -timeout 20m "$@" ./...) || status=$?
echo "tests/temporal: $((SECONDS - start))s (exit $status)"
exit "$status"
