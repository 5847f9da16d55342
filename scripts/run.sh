#!/usr/bin/env bash
# The main job: set everything up, start sproutd with the default model, and
# ask it a few sample prompts at each directive level, printing the answers,
# their token counts and carbon receipts. Stops the daemon at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$root/scripts/setup.sh"

port="${SPROUT_PORT:-7878}"
export SPROUT_URL="http://127.0.0.1:$port"
data_dir="$(mktemp -d)"
log="$data_dir/sproutd.log"
"$SPROUTD" --config "$root/config.toml" --listen "127.0.0.1:$port" --data-dir "$data_dir/store" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data_dir"' EXIT

echo "run: sproutd (pid $pid) on $SPROUT_URL, loading the model..."
for _ in $(seq 1 600); do
    if curl -fsS "$SPROUT_URL/healthz" >/dev/null 2>&1; then break; fi
    kill -0 $pid 2>/dev/null || { echo "run: sproutd exited:"; cat "$log"; exit 1; }
    sleep 0.2
done
curl -fsS "$SPROUT_URL/healthz"; echo

prompts=(
    "What is the capital of Australia?"
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
    "Why is the sky blue?"
)
for p in "${prompts[@]}"; do
    echo
    echo "=== $p"
    for level in L0 L1 L2; do
        echo "--- $level"
        "$SPROUTCTL" submit --directive "$level" --max-tokens 256 --seed 1 --wait "$p"
    done
done
echo
echo "=== a request without a pinned level (sproutd draws one from the optimizer's plan for its class)"
"$SPROUTCTL" submit --max-tokens 64 --seed 1 --wait "Name a prime number greater than 10."
echo
"$SPROUTCTL" list
echo
echo "=== the optimizer's plan, the grid, and the totals"
"$SPROUTCTL" plan
echo
"$SPROUTCTL" carbon
echo
"$SPROUTCTL" stats
