#!/usr/bin/env bash
# The whole test suite: set everything up (packages, model, build, a Python
# venv with the official openai client and prometheus_client's text-format
# parser, Prometheus' promtool, llama.cpp's server), then run every test, the
# real-model ones included.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup.sh"

venv="${SPROUT_VENV:-$HOME/.cache/sprout/venv}"
# openai 1.92 has chat.completions.parse (structured output into pydantic models).
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openai, prometheus_client, sys; sys.exit(tuple(map(int, openai.__version__.split('.')[:2])) < (1, 92))" 2>/dev/null; then
    echo "test: creating $venv with the openai client and the Prometheus parser"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "openai>=1.92" "prometheus_client>=0.20"
fi
export SPROUT_PYTHON="$venv/bin/python"
SPROUT_PROMTOOL="$(bash "$root/scripts/fetch-promtool.sh")"
export SPROUT_PROMTOOL
export SPROUT_REQUIRE_MODEL=1
# llama.cpp's server, an upstream backend in tests/backends.rs (built from the
# llama-cpp-python sdist by scripts/build-llamacpp.sh, which the benchmarks share).
SPROUT_LLAMA_SERVER="$(SPROUT_PIP="$venv/bin/pip" bash "$root/scripts/build-llamacpp.sh" --server-only | sed -n 's/^llama-server: //p')"
export SPROUT_LLAMA_SERVER

cd "$root"
# Tests that read the shared datasets (../shared/data beside the checkout)
# fail when it is missing, unless told here, loudly, that it is.
if [ ! -d "$root/../shared/data" ]; then
    echo "test: WARNING: $root/../shared/data is missing: the tests that read the shared datasets will skip (SPROUT_SHARED_OPTIONAL=1)" >&2
    export SPROUT_SHARED_OPTIONAL=1
fi
# The vendored crates are the published ones plus vendor/patches, byte for byte.
bash scripts/vendor.sh --check
# The patches' own tests inside the vendored crates (vendor/README.md), in the
# release profile. Built together with sprout, whose dev-dependencies name
# candle's, so this and the next command share one build of the engine
# (sprout's own unit tests are filtered out here and run below).
cargo test --release --locked -p sprout -p candle-core -p mistralrs-core --lib -- \
    q5_tests matmul_tests vnni_tests block_sum_tests interleaved::tests single_q_batched_matches_naive_per_sequence never_runs_more_than_max_num_seqs \
    batch_capacity_tests a_grammar_that_has_ended_is_ended_by_its_end_token \
    a_prompt_the_cache_holds_whole_reuses_all_but_its_last_token \
    full_q_matches_naive_and_the_single_query_kernel runs_on_a_pool_worker_and_returns_its_result \
    a_ragged_batch ragged_batch_tests decoding_sequences_of_different_lengths_share_a_step_when_the_pipeline_can
# Release profile: the real-model tests need optimized kernels, and it reuses
# the build setup.sh just made.
cargo test --release --locked -- --test-threads="${SPROUT_TEST_THREADS:-2}"
# The benchmarks (run by hand: README "Benchmarks") must keep building. Built in
# the release profile with the test build's features, so nothing is rebuilt
# for them (`cargo bench --no-run` would rebuild the engine in the bench profile).
cargo build --release --locked --benches
# The fuzz targets (fuzz/, README "Fuzzing") must keep building and running:
# they replay their seed corpus here; scripts/fuzz.sh fuzzes for a budget.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    SPROUT_FUZZ_SECS=0 bash scripts/fuzz.sh
else
    echo "test: no nightly toolchain; the fuzz targets were not built (rustup toolchain install nightly)"
fi
