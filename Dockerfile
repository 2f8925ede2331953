# The hpo image: one worker (`hpo optimize`), the MNIST download and the dashboard all run it.
# CPU-only PyTorch keeps it small (no CUDA libraries); build with `docker compose build`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/var/cache/hpo/numba

# PyTorch from its CPU wheel index first, so `pip install .` finds torch already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.14" "torchvision>=0.29"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY studies ./studies
RUN pip install . \
    && useradd --create-home --uid 1000 hpo \
    && mkdir /data "$NUMBA_CACHE_DIR" \
    && chown hpo /data "$NUMBA_CACHE_DIR"

USER hpo
# Compile the numba kernels into the image's cache now, so every container starts warm rather
# than compiling on its first trial (docs/performance.md, "Cold start"). A node with another
# CPU model compiles once more, into the same (writable) folder.
RUN python -m hpo.training.warm_up
ENV HPO_DATA_DIR=/data
CMD ["hpo", "--help"]
