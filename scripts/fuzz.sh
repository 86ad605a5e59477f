#!/usr/bin/env bash
# Runs every cargo-fuzz target for a short while (default 20 s each): a
# regression check, not a campaign. Long runs are done on purpose:
#   scripts/fuzz.sh 3600 package
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
seconds=${1:-20}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(package policy location firmware_ihex checkpoint audit_record audit_bundle agent_frame avr_stk500 stm32_an3155 client_identity deny_list signed_note remote_bitbang)
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s"
  mkdir -p "corpus/$t"
  # cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP enables them on stable.
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -seed=1 -print_final_stats=0 2>&1 | tail -n 3
done
