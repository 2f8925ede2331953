# The hpo image: one worker (`hpo optimize`), the MNIST download and the dashboard all run it.
# CPU-only PyTorch keeps it small (no CUDA libraries); build with `docker compose build`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch from its CPU wheel index first, so `pip install .` finds torch already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.14" "torchvision>=0.29"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hpo ./hpo
RUN pip install . \
    && useradd --create-home --uid 1000 hpo \
    && mkdir /data \
    && chown hpo /data

USER hpo
ENV HPO_DATA_DIR=/data
CMD ["hpo", "--help"]
