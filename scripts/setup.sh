#!/usr/bin/env bash
# Install Headwater into ./.venv and bring up the local stack (Kafka KRaft, Redis, connector jars).
# Needs Python >= 3.11, Java 17 and Maven; installs redis-server with apt when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null && { PY="$c"; break; }; done
fi
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup: Python 3.11 is required (PyFlink 2.2 supports 3.9-3.11 here): set PYTHON=/path/to/python3.11" >&2; exit 2; }
command -v java >/dev/null || { echo "setup: Java 17 is missing: apt-get install openjdk-17-jre-headless" >&2; exit 2; }
command -v mvn  >/dev/null || { echo "setup: Maven is missing: apt-get install maven" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
echo "setup: installing headwater and its dependencies (first run takes a minute or two) ..."
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[dev]"
if [ "${HEADWATER_SETUP_NO_STACK:-0}" = 1 ]; then
  echo "setup: installed; not starting the stack (HEADWATER_SETUP_NO_STACK=1)"
else
  headwater stack up "$@"
fi
