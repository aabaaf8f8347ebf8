#!/usr/bin/env bash
# Train tiny Chinese-CLIP towers (ViT-T-8-32 + RBT-Tiny-chinese) on the Pokemon dataset, on the CPU.
# From random initialisation: the whole path on a laptop in minutes, no weights to download.
#
#   bash run_scripts/pokemon_finetune_tiny_cpu.sh ${DATAPATH} [more `cn-clip-pokemon train` flags]
#   cn-clip-pokemon run-script pokemon_finetune_tiny_cpu ${DATAPATH} [...]   (pip install, no clone)
#
# Needs ${DATAPATH}/datasets/pokemon/lmdb/{train,valid}, made by
#   cn-clip-pokemon build-dataset --images PICTURES --out ${DATAPATH}/datasets/pokemon --image-size 32 --framing subject
# (pictures stored at the model's 32 px keep the data loader far ahead of training). `cn-clip-pokemon demo` builds
# it from the animations left after holding one per Pokemon out (datasets/pokemon-views, split by
# animation), so that the model can be evaluated on views it never saw; see the README.
# --dataset pokemon-augmented recolours or greys some training pictures (SpriteAugment).
# Writes ${DATAPATH}/experiments/pokemon_tiny_cpu/. Run it again after an interruption: it continues
# from that run's epoch_latest.pt.
#
# What to edit: epochs, batch size and learning rate below. Flags given after DATAPATH come last
# and win, e.g. `--max-epochs 1`.
set -euo pipefail

DATAPATH=${1:?usage: bash $0 DATAPATH [more cn-clip-pokemon train flags]}
shift
dataset=${DATAPATH}/datasets/pokemon

if [ ! -d "${dataset}/lmdb/train" ]; then
    echo "error: ${dataset}/lmdb/train not found; make it with: cn-clip-pokemon build-dataset --images PICTURES --out ${dataset} --image-size 32 --framing subject" >&2
    exit 1
fi

# One thread per PyTorch operation: with the data loader's worker that fills two cores, and it stays
# fast when other programs run (two threads were three times slower then). Set it yourself to override.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

cn-clip-pokemon train \
    --device cpu \
    --train-data "${dataset}/lmdb/train" \
    --val-data "${dataset}/lmdb/valid" \
    --logs "${DATAPATH}/experiments" \
    --name pokemon_tiny_cpu \
    --vision-model ViT-T-8-32 \
    --text-model RBT-Tiny-chinese \
    --context-length 12 \
    --batch-size 128 \
    --valid-batch-size 128 \
    --lr 1e-3 \
    --wd 0.1 \
    --warmup 50 \
    --mask-ratio 0 \
    --max-epochs 8 \
    --precision amp \
    --log-interval 10 \
    --report-training-batch-acc \
    --dataset pokemon-augmented \
    "$@"
