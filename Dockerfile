# dtrpo_mega on an NGC PyTorch image (Transformer Engine, apex and NCCL come with it).
# Build: docker build -t dtrpo_mega:latest .      (pin another image with --build-arg NGC_PYTORCH=...)
# The image (Python 3.12, torch 2.9) and megatron-core are pinned to the pair `make test-ngc` tests on CPU
# (Python 3.12, torch 2.9.1 from the package index, megatron-core 0.19.2): docs/gpu.md, "Tested versions".
ARG NGC_PYTORCH=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${NGC_PYTORCH}
ARG MEGATRON_CORE=0.19.2

WORKDIR /workspace/dtrpo_mega
COPY pyproject.toml README.md ./
COPY dtrpo_mega ./dtrpo_mega
COPY tools ./tools
COPY examples ./examples

# The image's torch, Transformer Engine and apex stay (NGC's PIP_CONSTRAINT pins them). Only a
# base image without TE takes the `gpu` extra, which compiles TE's PyTorch extension against the
# image's torch: PyPI has no wheel of it (only of TE's core library); the build needs nvcc and
# cuDNN headers, and sees the image's torch only with --no-build-isolation.
RUN if python -c "import transformer_engine.pytorch" 2>/dev/null; then \
        pip install --no-cache-dir -e . "megatron-core==${MEGATRON_CORE}" ; \
    else \
        pip install --no-cache-dir --no-build-isolation -e ".[gpu]" "megatron-core==${MEGATRON_CORE}" ; \
    fi && \
    python -c "import dtrpo_mega.models.dllm, transformer_engine.pytorch; from dtrpo_mega.compat import megatron_core_version as v; print('dtrpo_mega ready, megatron-core', v())"
