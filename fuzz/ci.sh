#!/usr/bin/env bash
# CI's fuzz step (docs/fuzzing.md, "In CI"): builds every fuzz target with
# cargo-fuzz's instrumentation, without installing cargo-fuzz, replays the kept
# crash inputs (fuzz/regressions/<target>/), then fuzzes each target for
# FUZZ_SECONDS (default 10) starting from the committed corpus
# (fuzz/corpus/<target>/). Any crash, failed assertion, leak, timeout or
# out-of-memory fails the step. Nothing in the checkout is written but
# fuzz/target: new inputs and artifacts go to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-10}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

# cargo-fuzz 0.13's flags for `cargo fuzz build` (libFuzzer instrumentation,
# AddressSanitizer, debug assertions and overflow checks); RUSTC_BOOTSTRAP
# lets stable rustc take the -Z flag. One change: opt-level 0 instead of 3,
# and cargo's default codegen units instead of one. That builds in well under
# half the time (2.5 instead of 6.5 to 8 minutes here), and the runs below
# replay the corpus and the regressions at a few thousand inputs per second,
# which is what this step is for; the campaigns use `cargo fuzz`'s build.
# Its own target directory, so it never invalidates a `cargo fuzz build`.
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    -Zsanitizer=address
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cdebug-assertions
)
export RUSTC_BOOTSTRAP=1 ASAN_OPTIONS=detect_odr_violation=0
RUSTFLAGS="${flags[*]}" cargo build --locked --release --bins \
    --target "$triple" --target-dir target/ci \
    --config 'profile.release.opt-level=0' \
    --config 'profile.release.debug="line-tables-only"'

targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^resourceful-fuzz$')
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in $targets; do
    bin="target/ci/$triple/release/$t"
    mkdir -p "$scratch/$t"
    inputs=()
    [ -d "corpus/$t" ] && inputs+=("corpus/$t")
    [ -d "regressions/$t" ] && inputs+=("regressions/$t")
    printf -- '--- %s (%s s; %s)\n' "$t" "$seconds" "${inputs[*]:-no corpus}"
    kept=()
    [ -d "regressions/$t" ] && kept=(regressions/"$t"/*)
    # Files (not a directory) as arguments: libFuzzer runs each once.
    if [ ${#kept[@]} -gt 0 ] && ! "$bin" "${kept[@]}" >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log"
        failed+=("$t (regression input)")
        continue
    fi
    if ! "$bin" "$scratch/$t" "${inputs[@]}" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="$scratch/$t-" -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        tail -n 40 "$scratch/$t.log"
        failed+=("$t")
        continue
    fi
    grep -E '^(Done|stat::number_of_executed_units)' "$scratch/$t.log" || true
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]}" >&2
    exit 1
fi
