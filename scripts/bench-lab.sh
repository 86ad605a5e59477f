# Sourced by the run benchmarks: the release binary, a work directory with
# OEM keys, a 64 KiB image and a sim policy with room for a million units,
# and `bench_sim_job DIR`, which makes a SoftHSM appliance in DIR, imports a
# job and sets `id` and the environment that selects it.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/setup.sh
command -v /usr/bin/time >/dev/null || { apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -q
fg="$root/target/release/flashgate"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
"$fg" oem init --out oem --name "Bench OEM" >/dev/null
head -c 65536 /dev/urandom > fw.bin
sed -e 's/^quota = 1000 .*/quota = 1000000/' -e 's/^end = 1000 .*/end = 9999999/' -e 's/^width = 6 .*/width = 7/' \
  "$root/policies/sim-secure-mcu.toml" > policy.toml

bench_sim_job() {
  local dir=$1 envline
  mkdir -p "$dir"; echo "bench-pin-1234" > "$dir/pin"
  envline=$("$root/scripts/tokens.sh" init softhsm "$dir/token" bench "$dir/pin"); export "${envline?}"
  printf 'state_dir = "state"\n[token]\nmodule = "/usr/lib/softhsm/libsofthsm2.so"\nlabel = "bench"\npin_file = "pin"\n[trust]\noem_keys = ["../oem/signing-key.pub.pem"]\n' > "$dir/appliance.toml"
  export FLASHGATE_CONFIG="$work/$dir/appliance.toml"
  "$fg" appliance init -o "$dir/enr.cbor" >/dev/null
  "$fg" job build --oem oem --policy policy.toml --firmware fw.bin@0x08000000 --appliance "$dir/enr.cbor" -o "$dir/job.fgj" >/dev/null 2>&1
  id=$("$fg" job import "$dir/job.fgj" | awk '{print $3}' | tr -d ':')
}
