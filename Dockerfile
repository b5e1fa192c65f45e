# thumbsae on CPU (the GPU variant: swap the base for an nvidia/cuda python image; torch 2.14.1's
# default wheel is a CUDA build). Build: docker build -t thumbsae .
# Run:   docker run --rm -v "$PWD/runs:/app/runs" thumbsae python train.py
# Decoding workers share batches through /dev/shm, which Docker caps at 64 MB: for batches of
# large images (say 256 x 336 px, 87 MB) add --shm-size=1g.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WANDB_MODE=offline \
    DVC_NO_ANALYTICS=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends git chromium \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first (the same pins as pyproject.toml), so source edits reuse this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p src/thumbsae && echo '__version__ = "0"' > src/thumbsae/__init__.py \
 && pip install "torch==2.14.1" "torchvision==0.29.1" \
 && pip install ".[dev]" \
 && pip uninstall -y thumbsae

COPY . .
RUN pip install --no-deps -e ".[dev]"

CMD ["thumbsae", "--help"]
