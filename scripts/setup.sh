#!/usr/bin/env bash
# Installs what flashgate's demo and tests need on a fresh Debian machine
# with Rust: the PKCS#11 tokens (SoftHSM2 from Debian, Kryoptic built from
# crates.io), OpenSC's pkcs11-tool, OpenSSL, avrdude, stm32flash and
# OpenOCD (the drivers' peers), curl and NSS tools (the
# station tests), PostgreSQL's server programs (the fleet tests and demo
# start a private cluster of their own; Debian's default cluster is not
# used), the Python packages the
# independent-verifier test uses, and for the console's browser test
# (tests/console.rs) Debian's Chromium, Node.js and npm, and playwright-core
# in tests/console/. Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

need=()
for pkg in softhsm2 opensc libclang-dev libssl-dev pkg-config clang openssl avrdude stm32flash openocd curl libnss3-tools postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# Node.js may come from elsewhere than Debian (with its own npm): only what
# is missing is asked for.
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! python3 -c 'import pycose, cryptography, cbor2' 2>/dev/null; then
  echo "installing Python packages: pycose cryptography cbor2" >&2
  python3 -m pip install -q pycose cryptography "cbor2<6" >&2
fi

# playwright-core at the version tests/console/package-lock.json pins; it
# drives Debian's /usr/bin/chromium and downloads no browser.
console="$root/tests/console"
want=$(node -p "require('$console/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "require('$console/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "installing playwright-core $want in tests/console" >&2
  (cd "$console" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2)
fi

"$root/scripts/tokens.sh" modules >/dev/null
