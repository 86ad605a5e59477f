#!/usr/bin/env bash
# The main command: the whole flashgate story on fresh simulated parts.
# For each token (SoftHSM2, then Kryoptic): a fresh token; OEM keys and the
# appliance's enrollment; a job built from policies/ and an example firmware
# image; import; 200 units across 8 simulated channels with realistic timing
# and a few injected faults; a summary and the paths of what it left behind
# (under demo-out/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -q
fg="$root/target/release/flashgate"
kryoptic=$(scripts/tokens.sh modules | grep '^FLASHGATE_KRYOPTIC_MODULE=' | cut -d= -f2)

printf '\n#### SoftHSM2 (compatibility key transport, PKCS#11 2.40)\n'
"$fg" demo --dir demo-out/softhsm --token softhsm "$@"
printf '\n#### Kryoptic (standard COSE key transport, PKCS#11 3.0)\n'
"$fg" demo --dir demo-out/kryoptic --token kryoptic --module "$kryoptic" "$@"
