#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of
# the workspace against real SoftHSM2 and Kryoptic tokens.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo test --workspace --locked "$@"
