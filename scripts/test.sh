#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, slow tests included. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast loop.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
