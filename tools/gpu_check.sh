#!/usr/bin/env bash
# One-call GPU check on a machine with one GPU (an NGC PyTorch image or alike), under 8 minutes:
#   1. install what is missing, from wheels only, keeping the machine's torch: this package with
#      `pip install -e . --no-deps`, then the unmet requirements of pyproject.toml (+ test extra);
#   2. python -m pytest tests/test_gpu.py;
#   3. tools/gpu_throughput.py (1.5B Fast-dLLM v2 shape, bf16, te and flex, s = 4k and 8k,
#      recompute off and on), whose table goes into docs/gpu.md between its markers.
# Transformer Engine's PyTorch extension has no wheel on PyPI (only its core library does), so a
# machine without TE skips the te cases; GPU_CHECK_BUILD_TE=1 builds it from source first (needs
# nvcc and cuDNN headers; takes longer than the 8 minutes).
# Settings: PYTHON (python), GPU_CHECK_LIMIT_S (450: the whole check), GPU_CHECK_TESTS_LIMIT_S (180),
# GPU_CHECK_OUT (runs/gpu_check: logs and JSON), GPU_CHECK_MEGATRON_CORE (the tested version for this Python).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
LIMIT_S=${GPU_CHECK_LIMIT_S:-450}
TESTS_LIMIT_S=${GPU_CHECK_TESTS_LIMIT_S:-180}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
START=$(date +%s)
mkdir -p "$OUT"

"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.device_count() >= 1 else 'tools/gpu_check.sh needs a CUDA GPU; torch sees none')"

# 1. Install. pip may resolve torch only to the installed build, and megatron-core only to the
#    version the tests ran with on this Python (docs/gpu.md, "Tested versions": 0.19.2 on Python
#    3.12, the NGC image's; 0.16.1, the newest for 3.11, on 3.11); GPU_CHECK_MEGATRON_CORE chooses
#    another. The image's own constraints (NGC: PIP_CONSTRAINT=/etc/pip/constraint.txt) stay in force.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PYTHON" -c "import torch; print(f'torch=={torch.__version__}')" > "$constraints"
megatron_core=${GPU_CHECK_MEGATRON_CORE:-$("$PYTHON" -c "import sys; print('0.19.2' if sys.version_info >= (3, 12) else '0.16.1')")}
echo "megatron-core==$megatron_core" >> "$constraints"
constraint_args=(-c "$constraints")
for file in ${PIP_CONSTRAINT:-}; do constraint_args+=(-c "$file"); done

"$PYTHON" -m pip install --quiet -e . --no-deps
mapfile -t missing < <(MEGATRON_CORE=$megatron_core "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from packaging.requirements import Requirement

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for line in project["dependencies"] + project["optional-dependencies"]["test"]:
    requirement = Requirement(line)
    if requirement.name in ("torch", "lm-eval"):  # the image's torch; the harness is not needed by the GPU tests
        continue
    try:
        installed = metadata.version(requirement.name)
        pinned = os.environ["MEGATRON_CORE"] if requirement.name == "megatron-core" else None
        if requirement.specifier.contains(installed, prereleases=True) and pinned in (None, installed.split("+")[0]):
            continue
    except metadata.PackageNotFoundError:
        pass
    print(line)
EOF
)
if ((${#missing[@]})); then
    echo "installing from wheels: ${missing[*]}"
    "$PYTHON" -m pip install --quiet --only-binary=:all: "${constraint_args[@]}" "${missing[@]}"
fi

backends=(te flex)
if ! "$PYTHON" -c "import transformer_engine.pytorch" 2>/dev/null; then
    if [[ ${GPU_CHECK_BUILD_TE:-0} == 1 ]]; then
        cuda_major=$("$PYTHON" -c "import torch; print(torch.version.cuda.split('.')[0])")
        echo "building Transformer Engine's PyTorch extension from source (core_cu$cuda_major wheel)"
        "$PYTHON" -m pip install --no-build-isolation "${constraint_args[@]}" "transformer_engine[pytorch,core_cu$cuda_major]"
    else
        echo "Transformer Engine is not installed and its PyTorch extension has no wheel: te cases skipped (GPU_CHECK_BUILD_TE=1 builds it)"
        backends=(flex)
    fi
fi

# 2. Tests (a failure is reported at the end; the throughput run still happens).
set +e
timeout "$TESTS_LIMIT_S" "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.txt"
tests_status=${PIPESTATUS[0]}
set -e
summary=$(tail -n 1 "$OUT/test_gpu.txt")
if ((tests_status == 124)); then summary="stopped at its ${TESTS_LIMIT_S} s limit"; fi

# 3. Throughput, in what is left of the limit (30 s kept for start-up and writing).
budget=$((LIMIT_S - ($(date +%s) - START) - 30))
if ((budget < 60)); then
    echo "no time left for the throughput run (${budget} s)" >&2
    exit 1
fi
timeout $((budget + 60)) "$PYTHON" tools/gpu_throughput.py --backends "${backends[@]}" --budget-s "$budget" \
    --out "$OUT/gpu_throughput.json" --docs docs/gpu.md \
    --note "tests/test_gpu.py (exit $tests_status): $summary" --note "Command: make gpu-check (tools/gpu_check.sh), $(($(date +%s) - START)) s before the throughput run."

echo "gpu check done in $(($(date +%s) - START)) s; tests exit $tests_status; table in docs/gpu.md, logs in $OUT"
exit "$tests_status"
