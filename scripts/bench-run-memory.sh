#!/usr/bin/env bash
# Benchmark: peak resident memory of `flashgate run` against the number of
# units, at zero simulated latency (64 KiB firmware, sim target, SoftHSM2).
# Memory must be flat in the units: nothing per unit stays once its record
# is durable. Also times `audit export` of the same job. Run on purpose;
# not part of the tests. UNITS="1000 100000" CHANNELS=8 by default.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -q
fg="$root/target/release/flashgate"
units=${UNITS:-"1000 100000"}
channels=${CHANNELS:-8}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$fg" oem init --out oem --name "Bench OEM" >/dev/null
head -c 65536 /dev/urandom > fw.bin
sed -e 's/^quota = 1000 .*/quota = 1000000/' -e 's/^end = 1000 .*/end = 9999999/' -e 's/^width = 6 .*/width = 7/' \
  "$root/policies/sim-secure-mcu.toml" > policy.toml
for n in $units; do
  dir="run-$n"; mkdir -p "$dir"; echo "bench-pin-1234" > "$dir/pin"
  envline=$("$root/scripts/tokens.sh" init softhsm "$dir/token" bench "$dir/pin"); export "${envline?}"
  printf 'state_dir = "state"\n[token]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\nlabel = "bench"\npin_file = "pin"\n[trust]\noem_keys = ["../oem/signing-key.pub.pem"]\n' > "$dir/appliance.toml"
  export FLASHGATE_CONFIG="$work/$dir/appliance.toml"
  "$fg" appliance init -o "$dir/enr.cbor" >/dev/null
  "$fg" job build --oem oem --policy policy.toml --firmware fw.bin@0x08000000 --appliance "$dir/enr.cbor" -o "$dir/job.fgj" >/dev/null 2>&1
  id=$("$fg" job import "$dir/job.fgj" | awk '{print $3}' | tr -d ':')
  r=$( { /usr/bin/time -f "%e %M" "$fg" run --job "$id" --channels "$channels" --target sim:timing=zero,flash-base=0x08000000 --units "$n" --json > "$dir/events.json" || true; } 2>&1 | tail -1)
  passed=$(grep -c '"event":"unit-passed"' "$dir/events.json" || true)
  echo "run: $n units on $channels channels ($passed passed): wall ${r% *} s, peak RSS ${r#* } KiB"
  e=$( { /usr/bin/time -f "%e %M" "$fg" audit export --job "$id" -o "$dir/bundle" >/dev/null; } 2>&1 | tail -1)
  echo "audit export: $n units: wall ${e% *} s, peak RSS ${e#* } KiB"
  unset FLASHGATE_CONFIG
done
