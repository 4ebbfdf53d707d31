#!/usr/bin/env bash
# The Quix Streams peer: makes its own venv (never the project's) from the hashed lock
# on first use, then runs the app in the foreground; SIGTERM stops it cleanly.
#   PEER_BOOTSTRAP PEER_INPUT_PREFIX PEER_OUTPUT_PREFIX PEER_APP_ID PEER_PARTITIONS PEER_STATE_DIR
#   run.sh build: make the venv only (the benchmark does it before timing anything)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="${PEER_QUIX_VENV:-$ROOT/var/peers/quix-venv}"
LOCK="$HERE/requirements.lock"
if [[ ! -f "$VENV/.installed" ]] || ! cmp -s "$LOCK" "$VENV/.installed"; then
    mkdir -p "$(dirname "$VENV")"
    exec 9>"$VENV.lock"; flock 9  # two peers starting at once build it once
    if [[ ! -f "$VENV/.installed" ]] || ! cmp -s "$LOCK" "$VENV/.installed"; then
        rm -rf "$VENV"
        python3.11 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$LOCK" >&2
        cp "$LOCK" "$VENV/.installed"
    fi
    exec 9>&-
fi
if [[ "${1:-}" == build ]]; then exit 0; fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}"
# exec: the app is this process, so a SIGTERM sent to run.sh reaches Quix's handler.
exec "$VENV/bin/python" "$HERE/app.py"
