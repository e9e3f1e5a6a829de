#!/usr/bin/env bash
# E1 at the paper's scale (ResNet-50, 224 px, granularities 16/8/4, batch 200), from the
# repository root: the same experiment file and base config as the 2-core run, with these overrides for every arm.
# `fgssl train` arms use a GPU when there is one (train.device: auto); the simulated sites of `fgssl simulate` arms
# still train on the CPU (client/site.py does not move the model to a device yet).
# Usage: bash simulations/e1_paper_scale.sh [OUT] [extra fgssl study args, e.g. --seeds 0 --arms pooled fedavg]
set -euo pipefail
out=${1:-runs/study-e1_ham10000-paper}
shift || true
exec python -m cli.main study e1_ham10000 --out "$out" \
  --set model.backbone=resnet50 --set model.width=64 --set data.image_size=224 \
  --set "model.granularities=[16,8,4]" --set train.batch_size=200 \
  --set data.cache_dir=runs/cache-224 "$@"
