# Sourced by the other scripts: makes .venv (once) and installs the project with the given extras.
# Usage: source scripts/setup_env.sh [EXTRAS]   e.g. `source scripts/setup_env.sh test`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
extras=${1:-}
spec=".${extras:+[$extras]}"
stamp=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  echo "setting up .venv: pip install -e '$spec' (first run takes a minute or two)" >&2
  case ",$extras," in
    # torch first, so that the hf and peers extras' range is met and pip pulls no CUDA wheels on CPU machines;
    # TORCH_SPEC=torch (or a CUDA build) on GPU machines.
    *,hf,*|*,peers,*|*,test,*) .venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" ;;
  esac
  .venv/bin/python -m pip install -q -e "$spec"
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
