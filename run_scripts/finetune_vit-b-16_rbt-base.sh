#!/usr/bin/env bash
# Upstream's MUGE / Flickr30k-CN fine-tuning (ViT-B-16 + RoBERTa-wwm-ext-base), made single-GPU.
# No torch.distributed.launch, no MASTER_ADDR/RANK to set by hand. Called by
# muge_finetune_vit-b-16_rbt-base.sh and flickr30k_finetune_vit-b-16_rbt-base.sh (the two upstream
# scripts had the same flags), or directly:
#
#   bash run_scripts/finetune_vit-b-16_rbt-base.sh MUGE|Flickr30k-CN ${DATAPATH} [more `cn-clip-pokemon train` flags]
#   cn-clip-pokemon run-script finetune_vit-b-16_rbt-base MUGE|Flickr30k-CN ${DATAPATH} [...]   (pip install, no clone)
#
# Needs (upstream's DATAPATH layout and data, see Chinese-CLIP's README):
#   ${DATAPATH}/datasets/${DATASET}/lmdb/{train,valid}
#   ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
# Writes ${DATAPATH}/experiments/{muge,flickr30k}_finetune_vit-b-16_roberta-base_bs128x8_1gpu/. Run
# it again after an interruption: it continues from that run's epoch_latest.pt.
#
# Why these numbers, on one GPU: upstream trained with 8 GPUs x 128 = 1,024 pairs per contrastive
# loss, lr 5e-5, warmup 100 steps. --batch-size 128 --accum-freq 8 gives the same 1,024 per loss on
# one GPU: upstream's accumulation first embeds all 8 chunks without gradients, then recomputes each
# chunk against all 1,024 embeddings, so the loss, the steps and the lr schedule equal upstream's,
# at about 1.3x the compute and the memory of batch 128 (~26 GB with amp). Halving the batch and
# lr instead would change the loss (fewer negatives), not only the speed.
# --keep-checkpoints 2: each checkpoint with its optimizer state is 2.3 GB.
# What to edit: on a 24 GB GPU use --batch-size 64 --accum-freq 16 (same 1,024) or add
# --grad-checkpointing. Flags given after DATAPATH come last and win, e.g.
# `--nproc-per-node 8 --accum-freq 1` for upstream's own 8-GPU setting.
set -euo pipefail

DATASET=${1:?usage: bash $0 MUGE|Flickr30k-CN DATAPATH [more cn-clip-pokemon train flags]}
DATAPATH=${2:?usage: bash $0 ${DATASET} DATAPATH [more cn-clip-pokemon train flags]}
shift 2
dataset=${DATAPATH}/datasets/${DATASET}
weights=${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
name=$(echo "${DATASET%%-*}" | tr "[:upper:]" "[:lower:]")_finetune_vit-b-16_roberta-base_bs128x8_1gpu

if [ ! -d "${dataset}/lmdb/train" ]; then
    echo "error: ${dataset}/lmdb/train not found; get ${DATASET} as Chinese-CLIP's README says, then run upstream's cn_clip/preprocess/build_lmdb_dataset.py --data_dir ${dataset} --splits train,valid" >&2
    exit 1
fi

cn-clip-pokemon train \
    --train-data "${dataset}/lmdb/train" \
    --val-data "${dataset}/lmdb/valid" \
    --pretrained "${weights}" \
    --logs "${DATAPATH}/experiments" \
    --name "${name}" \
    --save-step-frequency 999999 \
    --save-epoch-frequency 1 \
    --keep-checkpoints 2 \
    --log-interval 1 \
    --report-training-batch-acc \
    --context-length 52 \
    --warmup 100 \
    --batch-size 128 \
    --valid-batch-size 128 \
    --valid-step-interval 150 \
    --valid-epoch-interval 1 \
    --accum-freq 8 \
    --lr 5e-5 \
    --wd 0.001 \
    --max-epochs 3 \
    --vision-model ViT-B-16 \
    --text-model RoBERTa-wwm-ext-base-chinese \
    --use-augment \
    "$@"
