#!/usr/bin/env bash
# The test suite on CPU (8 fake devices, set by tests/conftest.py), in TEST_WORKERS (default 2) processes, each
# test module in one of them. Extra args go to pytest: `bash scripts/test.sh -m "not slow"` is the fast tier.
source "$(dirname "$0")/setup_env.sh" test
exec python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadscope "$@"
