#!/usr/bin/env bash
# Create ./.venv and install tformer into it (editable). `--dev` adds the test dependencies.
#
# torch is installed first and on its own, because an unpinned `pip install torch` pulls a CUDA build
# of several GB. TFORMER_TORCH picks the requirement (default torch==2.13.0: the CUDA build from PyPI on a
# Linux GPU machine, or a local wheel where pip's find-links offers one). For a small CPU-only build
# elsewhere: TFORMER_TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  torch_req=${TFORMER_TORCH:-torch==2.13.0}
  if [[ -n "${TFORMER_TORCH_INDEX:-}" ]]; then
    "${pip[@]}" install "$torch_req" --index-url "$TFORMER_TORCH_INDEX"
  else
    "${pip[@]}" install "$torch_req"
  fi
fi
"${pip[@]}" install -e ".${extras}"
.venv/bin/python -c "import torch, transformer_cli; print(f'tformer {transformer_cli.__version__} ready (torch {torch.__version__}, cuda available: {torch.cuda.is_available()})')"
