#!/usr/bin/env bash
# The test command: install, then run the whole suite. The pytest `stack` fixture reuses a running
# stack or starts Kafka + Redis itself and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
HEADWATER_SETUP_NO_STACK=1 bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
