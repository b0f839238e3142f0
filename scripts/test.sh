#!/usr/bin/env bash
# The test suite on CPU (8 fake devices, set by tests/conftest.py). Extra args go to pytest.
source "$(dirname "$0")/setup_env.sh" test
exec python -m pytest -q "$@"
