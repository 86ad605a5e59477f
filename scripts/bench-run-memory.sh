#!/usr/bin/env bash
# Benchmark: peak resident memory of `flashgate run` against the number of
# units, at zero simulated latency (64 KiB firmware, sim target, SoftHSM2).
# Memory must be flat in the units: nothing per unit stays once its record
# is durable. Also times `audit export` of the same job. Run on purpose;
# not part of the tests. UNITS="1000 100000" CHANNELS=8 by default.
set -euo pipefail
# shellcheck source=scripts/bench-lab.sh
source "$(dirname "$0")/bench-lab.sh"
units=${UNITS:-"1000 100000"}
channels=${CHANNELS:-8}
for n in $units; do
  dir="run-$n"; bench_sim_job "$dir"
  r=$( { /usr/bin/time -f "%e %M" "$fg" run --job "$id" --channels "$channels" --target sim:timing=zero,flash-base=0x08000000 --units "$n" --json > "$dir/events.json" || true; } 2>&1 | tail -1)
  passed=$(grep -c '"event":"unit-passed"' "$dir/events.json" || true)
  echo "run: $n units on $channels channels ($passed passed): wall ${r% *} s, peak RSS ${r#* } KiB"
  e=$( { /usr/bin/time -f "%e %M" "$fg" audit export --job "$id" -o "$dir/bundle" >/dev/null; } 2>&1 | tail -1)
  echo "audit export: $n units: wall ${e% *} s, peak RSS ${e#* } KiB"
  unset FLASHGATE_CONFIG
done
