#!/usr/bin/env bash
# Benchmark: quota burnt per crash. Runs `flashgate run` on 8 channels of
# the sim target, kills it with SIGKILL after a random 2-6 s, lets the next
# command recover, and counts the counter values recovery closes as unused
# (reserved ahead, never handed to a board). Once with realistic timing and
# once at zero latency. Run on purpose; not part of the tests.
# KILLS=10 CHANNELS=8 by default.
set -euo pipefail
# shellcheck source=scripts/bench-lab.sh
source "$(dirname "$0")/bench-lab.sh"
kills=${KILLS:-10}
channels=${CHANNELS:-8}
for timing in realistic zero; do
  dir="$timing"; bench_sim_job "$dir"
  for i in $(seq "$kills"); do
    "$fg" run --job "$id" --channels "$channels" --target "sim:timing=$timing,seed=$((i * 7919)),flash-base=0x08000000" --json >/dev/null 2>&1 &
    pid=$!
    sleep "$(( (RANDOM % 5) + 2 ))"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  "$fg" audit export --job "$id" -o "$dir/bundle" >/dev/null
  "$fg" audit verify "$dir/bundle" --oem oem/signing-key.pub.pem --json > "$dir/report.json" || true
  python3 - "$dir/report.json" "$timing" "$kills" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r = r.get("report", r)
u = r["units"]; q = r["quota"]
used = q["used"]
print(f"{sys.argv[2]}: {sys.argv[3]} kills, counter values used {used}: passed {u['passed']}, failed {u['failed']}, "
      f"aborted {u['aborted']}, unused {u['unused']} ({100.0 * u['unused'] / max(used, 1):.1f}% of the quota used, "
      f"{u['unused'] / int(sys.argv[3]):.1f} per crash)")
PY
  unset FLASHGATE_CONFIG
done
