#!/usr/bin/env bash
# Benchmark: import of a job with a 4 MiB image on each token. Reports wall
# time and peak resident memory of `flashgate job import`, next to a
# baseline (`flashgate job list` on the same appliance: module load, login).
# Run on purpose; not part of the tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -q
fg="$root/target/release/flashgate"
size_mib=${SIZE_MIB:-4}
runs=${RUNS:-5}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$fg" oem init --out oem --name "Bench OEM" >/dev/null
head -c $((size_mib * 1024 * 1024)) /dev/urandom > fw.bin
for kind in softhsm kryoptic; do
  mkdir -p "$kind"; echo "bench-pin-1234" > "$kind/pin"
  envline=$("$root/scripts/tokens.sh" init "$kind" "$kind/token" bench "$kind/pin"); export "${envline?}"
  module=$("$root/scripts/tokens.sh" modules | grep -i "^FLASHGATE_${kind^^}_MODULE=" | cut -d= -f2)
  printf 'state_dir = "state"\n[token]\nmodule = "%s"\nlabel = "bench"\npin_file = "pin"\n[trust]\noem_keys = ["../oem/signing-key.pub.pem"]\n' "$module" > "$kind/appliance.toml"
  export FLASHGATE_CONFIG="$work/$kind/appliance.toml"
  "$fg" appliance init -o "$kind/enr.cbor" >/dev/null
  for i in $(seq "$runs"); do
    "$fg" job build --oem oem --policy "$root/policies/sim-secure-mcu.toml" --firmware fw.bin@0x08000000 --appliance "$kind/enr.cbor" -o "$kind/job$i.fgj" >/dev/null
  done
  base=$( { /usr/bin/time -f "%e %M" "$fg" job list >/dev/null; } 2>&1 | tail -1)
  echo "$kind: baseline (job list): wall ${base% *} s, peak RSS ${base#* } KiB"
  for i in $(seq "$runs"); do
    r=$( { /usr/bin/time -f "%e %M" "$fg" job import "$kind/job$i.fgj" >/dev/null; } 2>&1 | tail -1)
    echo "$kind: import ${size_mib} MiB run $i: wall ${r% *} s, peak RSS ${r#* } KiB"
  done
  unset FLASHGATE_CONFIG
done
