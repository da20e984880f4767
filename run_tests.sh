#!/usr/bin/env bash
# Run the test suite (sets up .venv/ on first use). Extra arguments go to pytest.
set -eu
cd "$(dirname "$0")"
need=tests source scripts/python_env.sh
exec "$PY" -m pytest "$@"
