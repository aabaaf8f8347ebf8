#!/usr/bin/env bash
# Fine-tune Chinese-CLIP ViT-B-16 + RoBERTa-wwm-ext-base on the Pokemon dataset, on one GPU.
#
#   bash run_scripts/pokemon_finetune_vit-b-16.sh ${DATAPATH} [more `cn-clip-pokemon train` flags]
#   cn-clip-pokemon run-script pokemon_finetune_vit-b-16 ${DATAPATH} [...]   (pip install, no clone)
#
# Needs (upstream's DATAPATH layout):
#   ${DATAPATH}/datasets/pokemon/lmdb/{train,valid}
#       cn-clip-pokemon build-dataset --images PICTURES --out ${DATAPATH}/datasets/pokemon --framing subject
#   ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt   (Chinese-CLIP's released ViT-B-16 weights)
# Writes ${DATAPATH}/experiments/pokemon_finetune_vit-b-16/ (checkpoints/, metrics.jsonl, logs).
# Run it again after an interruption: it continues from that run's epoch_latest.pt.
#
# Why these numbers, on one GPU:
#   --batch-size 128: the contrastive loss learns from the other pictures of a batch, and the
#     sampler never puts one Pokemon twice in a batch, so 128 of the 649 names per batch. With
#     batch 128 the released weights reached 98% in-batch accuracy after 30 epochs (V100 32 GB,
#     26 GB used); with 64 on a 24 GB card it sat near 1% for hundreds of epochs. No --accum-freq:
#     accumulated batches would repeat Pokemon inside one loss.
#   --lr 5e-5, --warmup 100: upstream's fine-tuning values for released weights.
#   --keep-checkpoints 2: each ViT-B-16 checkpoint with its optimizer state is 2.3 GB; this keeps
#     the two newest epochN.pt beside epoch_latest.pt (about 7 GB) instead of ~47 GB for 20 epochs.
# What to edit: on a 24 GB GPU add --grad-checkpointing (same batch; slower and far less memory,
# by how much not measured here); --use-flash-attention runs both towers on PyTorch's fused attention
# (same results; expected faster and leaner, not measured here). Flags given after DATAPATH come
# last and win, e.g. `--max-epochs 1`. Several GPUs: `--nproc-per-node 8 --batch-size 16` keeps this
# recipe (upstream gathers every GPU's features into one loss, so 8 x 16 = the same 128 pairs per
# loss, steps and lr schedule; --valid-batch-size stays 128, as validation is per GPU).
set -euo pipefail

DATAPATH=${1:?usage: bash $0 DATAPATH [more cn-clip-pokemon train flags]}
shift
dataset=${DATAPATH}/datasets/pokemon
weights=${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
name=pokemon_finetune_vit-b-16

if [ ! -d "${dataset}/lmdb/train" ]; then
    echo "error: ${dataset}/lmdb/train not found; make it with: cn-clip-pokemon build-dataset --images PICTURES --out ${dataset} --framing subject" >&2
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
    --batch-size 128 \
    --valid-batch-size 128 \
    --lr 5e-5 \
    --wd 0.001 \
    --warmup 100 \
    --max-epochs 20 \
    --precision amp \
    --use-augment \
    --save-epoch-frequency 1 \
    --keep-checkpoints 2 \
    --valid-epoch-interval 1 \
    --log-interval 10 \
    --report-training-batch-acc \
    "$@"
