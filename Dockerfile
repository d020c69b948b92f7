# dtrpo_mega on an NGC PyTorch image (Transformer Engine, apex and NCCL come with it).
# Build: docker build -t dtrpo_mega:latest .      (pin another image with --build-arg NGC_PYTORCH=...)
ARG NGC_PYTORCH=nvcr.io/nvidia/pytorch:25.10-py3
FROM ${NGC_PYTORCH}

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
        pip install --no-cache-dir -e . ; \
    else \
        pip install --no-cache-dir --no-build-isolation -e ".[gpu]" ; \
    fi && \
    python -c "import dtrpo_mega.models.dllm, transformer_engine.pytorch; print('dtrpo_mega ready')"
