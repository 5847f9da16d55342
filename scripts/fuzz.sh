#!/usr/bin/env bash
# Fuzzes sproutd's parsers of outside input (README "Fuzzing") for a fixed
# budget: SPROUT_FUZZ_SECS seconds per target (default 60; 0 only replays the
# seed corpus, as scripts/test.sh does), all targets or the ones named. libFuzzer through libfuzzer-sys, built with nightly Rust and
# the coverage instrumentation cargo-fuzz uses (no sanitizer: the code under
# test is safe Rust, so what is looked for is panics and hangs). Crashes land
# in fuzz/artifacts/<target>/; each one found is kept as a regression test.
# Prints executions and crashes per target; exits 1 if any target crashed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
secs="${SPROUT_FUZZ_SECS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(request config trace carbon_api judge_verdict)
toolchain="${SPROUT_FUZZ_TOOLCHAIN:-nightly}"
triple="$(rustc +"$toolchain" -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="${SPROUT_FUZZ_TARGET_DIR:-$HOME/.cache/sprout-fuzz-target}"
# With --target, these reach only the fuzzed code, not build scripts.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cd "$root/fuzz"
cargo +"$toolchain" build --locked --release --target "$triple" --bins
# Seeds: the shipped config, the built-in trace, a request, an API answer.
mkdir -p corpus/request corpus/config corpus/trace corpus/carbon_api corpus/judge_verdict
cp -n "$root/config.toml" corpus/config/shipped.toml
head -c 4000 "$root/traces/GB_2023_hourly.csv" > corpus/trace/gb-head.csv
printf '%s' '{"model":"qwen2.5-coder-0.5b-instruct","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"2+2?"}],"max_tokens":16,"temperature":0.2,"stream":true,"stream_options":{"include_usage":true},"directive":"L1","deadline":"6h","seed":7,"stop":["\n"]}' > corpus/request/chat.json
printf '%s' '{"zone":"DE","carbonIntensity":302,"datetime":"2024-05-01T10:00:00.000Z","forecast":[{"carbonIntensity":280,"datetime":"2024-05-01T11:00:00.000Z"}],"data":[{"from":"2024-05-01T10:00Z","to":"2024-05-01T10:30Z","intensity":{"forecast":120,"actual":118,"index":"low"}}]}' > corpus/carbon_api/mixed.json
printf '%s' 'After comparing them, the best answer is Answer 2.' > corpus/judge_verdict/reply.txt
status=0
for t in "${targets[@]}"; do
    mkdir -p "artifacts/$t"
    log="$(mktemp)"
    set +e
    if [ "$secs" -gt 0 ]; then budget=(-max_total_time="$secs"); else budget=(-runs=0); fi
    "$CARGO_TARGET_DIR/$triple/release/$t" "corpus/$t" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    crashes="$(find "artifacts/$t" -type f | wc -l)"
    if [ "$secs" -gt 0 ]; then how="in ${secs} s"; else how="(the corpus replayed)"; fi
    echo "fuzz: $t: ${runs:-?} executions $how, exit $rc, $crashes crash file(s) in fuzz/artifacts/$t"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        grep -m 5 -E 'panicked|ERROR|SUMMARY' "$log" || true
    fi
    rm -f "$log"
done
exit "$status"
