#!/usr/bin/env bash
# Runs every fuzz target of nexus-gateway for a bounded time each.
#
#   gateway/fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS per target defaults to 60 (or $FUZZ_SECONDS); TARGETs default to all of them.
# Exits non-zero if any target crashes (the input is saved under artifacts/<target>/) or fails
# to build. Needs `cargo install cargo-fuzz --locked`; works on stable Rust through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes nightly-only flags such as -Zsanitizer=address).
set -uo pipefail

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

seconds="${1:-${FUZZ_SECONDS:-60}}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS] [TARGET...]   (SECONDS a positive integer)" >&2
    exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(route_path headers config)
fi

cargo fuzz build || exit 1

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    args=(-max_total_time="$seconds" -print_final_stats=1)
    [ -f "dicts/$t.dict" ] && args+=(-dict="dicts/$t.dict")
    corpora=("corpus/$t")
    [ -d "seeds/$t" ] && corpora+=("seeds/$t")
    echo "=== $t: ${seconds}s ==="
    if ! cargo fuzz run "$t" "${corpora[@]}" -- "${args[@]}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]} (inputs under artifacts/)" >&2
    exit 1
fi
echo "all ${#targets[@]} targets ran ${seconds}s each without a crash"
