#!/usr/bin/env bash
# Builds the Kryoptic module (once) and prints where the PKCS#11 modules are.
#   scripts/tokens.sh modules        -> build Kryoptic if needed, print env lines
#   scripts/tokens.sh init KIND DIR LABEL PINFILE
#        create a fresh, initialised token of KIND (softhsm|kryoptic) under DIR,
#        with a user PIN read from PINFILE; prints the env line that selects it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
softhsm_module=/usr/lib/softhsm/libsofthsm2.so
kryoptic_dir="$root/tokens/kryoptic"
kryoptic_module="$kryoptic_dir/target/release/libkryoptic_pkcs11.so"

build_kryoptic() {
  # Rebuilt when its manifest changes (a new feature), not only when missing.
  local want stamp="$kryoptic_dir/target/built-from.sha256"
  want=$(cat "$kryoptic_dir/Cargo.toml" "$kryoptic_dir/Cargo.lock" | sha256sum | cut -d' ' -f1)
  if [ ! -f "$kryoptic_module" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "building the Kryoptic PKCS#11 module (once)..." >&2
    (cd "$kryoptic_dir" && CARGO_TARGET_DIR="$kryoptic_dir/target" cargo build --release --locked -p kryoptic >&2)
    echo "$want" > "$stamp"
  fi
}

case "${1:-}" in
  modules)
    build_kryoptic
    echo "FLASHGATE_SOFTHSM_MODULE=$softhsm_module"
    echo "FLASHGATE_KRYOPTIC_MODULE=$kryoptic_module"
    ;;
  init)
    kind=$2; dir=$3; label=$4; pinfile=$5
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    so_pin=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    pin=$(cat "$pinfile")
    case "$kind" in
      softhsm)
        mkdir -p "$dir/tokens"
        printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$dir" > "$dir/softhsm2.conf"
        SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$pin" >/dev/null
        echo "SOFTHSM2_CONF=$dir/softhsm2.conf"
        ;;
      kryoptic)
        build_kryoptic
        printf '[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "%s/token.sql"\n' "$dir" > "$dir/kryoptic.conf"
        KRYOPTIC_CONF="$dir/kryoptic.conf" pkcs11-tool --module "$kryoptic_module" --init-token --label "$label" --so-pin "$so_pin" 2> >(grep -v "^Using slot" >&2) >/dev/null
        KRYOPTIC_CONF="$dir/kryoptic.conf" pkcs11-tool --module "$kryoptic_module" --login --login-type so --so-pin "$so_pin" --init-pin --pin "$pin" 2> >(grep -v "^Using slot" >&2) >/dev/null
        echo "KRYOPTIC_CONF=$dir/kryoptic.conf"
        ;;
      *) echo "unknown token kind '$kind' (softhsm|kryoptic)" >&2; exit 2 ;;
    esac
    ;;
  *) echo "usage: $0 modules | init KIND DIR LABEL PINFILE" >&2; exit 2 ;;
esac
