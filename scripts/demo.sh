#!/usr/bin/env bash
# The main job: install, start the stack with Redis persistence, run `headwater demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --redis-persistence
. .venv/bin/activate
headwater demo "$@"
