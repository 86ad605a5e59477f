#!/usr/bin/env bash
# The main command: the OEM -> CM story on real PKCS#11 tokens.
# An OEM creates its keys; two appliances (one on SoftHSM2, one on Kryoptic)
# enroll; the OEM builds a job for each from policies/ and an example
# firmware image; each appliance imports its job. Everything is left under
# demo-out/ to look at.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -q
fg="$root/target/release/flashgate"
out="$root/demo-out"
rm -rf "$out"; mkdir -p "$out"; cd "$out"

step() { printf '\n== %s\n' "$*"; }

step "OEM: create the job-signing key and the device-root CA (key files, development only)"
"$fg" oem init --out oem --name "Acme Corp"

# An example firmware image: 256 KiB, as Intel HEX would come from a build.
python3 - <<'PY'
import os
data = bytes((i * 31 + (i >> 9)) & 0xff for i in range(256 * 1024))
open("firmware.bin", "wb").write(data)
PY

for kind in softhsm kryoptic; do
  step "CM ($kind): a fresh token, then enroll the appliance"
  mkdir -p "$kind"
  head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$kind/user-pin"; chmod 600 "$kind/user-pin"
  envline=$("$root/scripts/tokens.sh" init "$kind" "$kind/token" appliance "$kind/user-pin")
  export "${envline?}"
  module=$("$root/scripts/tokens.sh" modules | grep -i "^FLASHGATE_${kind^^}_MODULE=" | cut -d= -f2)
  cp oem/signing-key.pub.pem "$kind/acme-signing.pub.pem"
  cat > "$kind/appliance.toml" <<TOML
state_dir = "state"
[token]
module = "$module"
label = "appliance"
pin_file = "user-pin"
[trust]
oem_keys = ["acme-signing.pub.pem"]
TOML
  export FLASHGATE_CONFIG="$out/$kind/appliance.toml"
  "$fg" appliance init -o "$kind/enrollment.cbor"

  step "OEM: build a job for that appliance"
  "$fg" job build --oem oem --policy "$root/policies/sim-secure-mcu.toml" \
    --firmware firmware.bin@0x08000000 --appliance "$kind/enrollment.cbor" -o "$kind/job.fgj"
  "$fg" job inspect "$kind/job.fgj" | head -9

  step "CM ($kind): import the job (verify, unwrap into the HSM, decrypt and check in the HSM)"
  "$fg" job import "$kind/job.fgj"
  "$fg" job list
  "$fg" appliance show | sed -n '/token objects/,$p'

  step "CM ($kind): a tampered copy is refused and leaves nothing behind"
  python3 - "$kind/job.fgj" "$kind/tampered.fgj" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read()); b[len(b) // 2] ^= 1
open(sys.argv[2], "wb").write(b)
PY
  if "$fg" job import "$kind/tampered.fgj"; then echo "tampered package was accepted" >&2; exit 1; fi
  unset FLASHGATE_CONFIG
done

step "done: everything is under $out"
