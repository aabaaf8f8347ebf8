#!/usr/bin/env bash
# Fine-tune Chinese-CLIP ViT-B-16 + RoBERTa-wwm-ext-base on the Pokemon dataset, on one GPU.
#
#   bash run_scripts/pokemon_finetune_vit-b-16.sh ${DATAPATH} [more `cn-clip-pokemon train` flags]
#
# Needs (upstream's DATAPATH layout):
#   ${DATAPATH}/datasets/pokemon/lmdb/{train,valid}
#       cn-clip-pokemon build-dataset --images PICTURES --out ${DATAPATH}/datasets/pokemon
#   ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt   (Chinese-CLIP's released ViT-B-16 weights)
# Writes ${DATAPATH}/experiments/pokemon_finetune_vit-b-16/ (checkpoints/, metrics.jsonl, logs).
# Run it again after an interruption: it continues from that run's epoch_latest.pt.
#
# What to edit: batch size and learning rate below are for one 24 GB GPU with amp. Flags given
# after DATAPATH come last and win, e.g. `--max-epochs 1` or `--nproc-per-node 4` (4 GPUs).
set -euo pipefail

DATAPATH=${1:?usage: bash $0 DATAPATH [more cn-clip-pokemon train flags]}
shift
dataset=${DATAPATH}/datasets/pokemon
weights=${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
name=pokemon_finetune_vit-b-16

if [ ! -d "${dataset}/lmdb/train" ]; then
    echo "error: ${dataset}/lmdb/train not found; make it with: cn-clip-pokemon build-dataset --images PICTURES --out ${dataset}" >&2
    exit 1
fi

cn-clip-pokemon train \
    --train-data "${dataset}/lmdb/train" \
    --val-data "${dataset}/lmdb/valid" \
    --pretrained "${weights}" \
    --logs "${DATAPATH}/experiments" \
    --name "${name}" \
    --vision-model ViT-B-16 \
    --text-model RoBERTa-wwm-ext-base-chinese \
    --context-length 52 \
    --batch-size 64 \
    --valid-batch-size 64 \
    --lr 5e-5 \
    --wd 0.001 \
    --warmup 100 \
    --max-epochs 20 \
    --precision amp \
    --use-augment \
    --save-epoch-frequency 1 \
    --valid-epoch-interval 1 \
    --log-interval 10 \
    --report-training-batch-acc \
    "$@"
