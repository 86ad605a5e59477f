#!/usr/bin/env bash
# The main command: the whole flashgate story on fresh simulated parts.
# For each token (SoftHSM2, then Kryoptic): a fresh token; OEM keys and the
# appliance's enrollment; a job built from policies/ and an example firmware
# image; import; 200 units across 8 simulated channels with realistic timing
# and a few injected faults; a summary and the paths of what it left behind
# (under demo-out/). Then the OEM's fleet view: both bundles (two appliances,
# one OEM) into one PostgreSQL database, each log cosigned by the collector
# as a witness, its report, the CM's check of a cosigned checkpoint, and one
# device lookup.
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
# A second appliance of the same OEM, with the product's next serial range;
# its boards are other chips (another simulator seed), unless the caller
# chose the simulator options.
second=("$@")
case " $* " in *" --sim"*) ;; *) second+=(--sim seed=8,timing=realistic,fault-rate=0.03) ;; esac
"$fg" demo --dir demo-out/kryoptic --token kryoptic --module "$kryoptic" \
  --oem-from demo-out/softhsm/oem --serial-start 1001 "${second[@]}"

printf '\n#### OEM: both bundles into one fleet database\n'
# A private PostgreSQL cluster under the build tree, removed at the end.
pg="$root/target/demo-fleet-pg"
scripts/pg.sh stop "$pg"
scripts/pg.sh start "$pg"
trap 'scripts/pg.sh stop "$pg"' EXIT
db=$(scripts/pg.sh url "$pg")
"$fg" fleet init --db "$db" --oem demo-out/softhsm/oem/signing-key.pub.pem
# The collector is also a witness: it cosigns each log it found consistent.
rm -rf demo-out/witness demo-out/cosigned
"$fg" fleet witness init --out demo-out/witness --name acme.example/fleet
witness=(--witness demo-out/witness --cosigned-out demo-out/cosigned)
out=$("$fg" fleet ingest --db "$db" --cm "Northfield EMS" "${witness[@]}" demo-out/softhsm/audit-bundle)
echo "$out"
kept=$(echo "$out" | sed -n 's/.*cosigned checkpoint at [0-9]* written to //p')
"$fg" fleet ingest --db "$db" --cm "Southgate Assembly" "${witness[@]}" demo-out/kryoptic/audit-bundle
"$fg" fleet report --db "$db"
cert=$(ls demo-out/kryoptic/audit-bundle/certs | head -n 1)
printf '\n#### CM: the cosigned checkpoint as the kept one, the witness checked\n'
"$fg" audit verify demo-out/softhsm/audit-bundle --oem demo-out/softhsm/oem/signing-key.pub.pem \
  --previous-checkpoint "$kept" --witness demo-out/witness/witness.vkey | grep -E 'cosigned|verdict'
printf '\n#### OEM: a device seen in the field, by its certificate\n'
"$fg" fleet device --db "$db" --cert "demo-out/kryoptic/audit-bundle/certs/$cert" --out demo-out/device
"$fg" audit check-proof demo-out/device/record-1/proof.json --appliance demo-out/device/record-1/enrollment.cbor
