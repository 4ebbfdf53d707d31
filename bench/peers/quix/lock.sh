#!/usr/bin/env bash
# Regenerate requirements.lock (pinned, hashed) from requirements.in with pip-tools.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${LOCK_TOOLS:-$HERE/../../../var/lock-tools}"
[[ -x "$TOOLS/bin/pip-compile" ]] || { python3.11 -m venv "$TOOLS"; "$TOOLS/bin/pip" install --quiet pip-tools==7.6.2; }
cd "$HERE"
CUSTOM_COMPILE_COMMAND="bench/peers/quix/lock.sh" "$TOOLS/bin/pip-compile" --quiet --generate-hashes \
    --allow-unsafe --strip-extras --no-emit-find-links --no-emit-index-url -o requirements.lock requirements.in
