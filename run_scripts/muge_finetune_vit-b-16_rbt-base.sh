#!/usr/bin/env bash
# Upstream's MUGE fine-tuning (ViT-B-16 + RoBERTa-wwm-ext-base), made single-GPU.
# No torch.distributed.launch, no MASTER_ADDR/RANK to set by hand.
#
#   bash run_scripts/muge_finetune_vit-b-16_rbt-base.sh ${DATAPATH} [more `cn-clip-pokemon train` flags]
#   cn-clip-pokemon run-script muge_finetune_vit-b-16_rbt-base ${DATAPATH} [...]   (pip install, no clone)
#
# Needs (upstream's DATAPATH layout and data, see Chinese-CLIP's README):
#   ${DATAPATH}/datasets/MUGE/lmdb/{train,valid}
#   ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
# Writes ${DATAPATH}/experiments/muge_finetune_vit-b-16_roberta-base_bs128x8_1gpu/. Run it again after an
# interruption: it continues from that run's epoch_latest.pt.
#
# Upstream's 8 GPUs x 128 become --batch-size 128 --accum-freq 8 on one GPU: the same 1,024 pairs
# per loss, lr and schedule (see finetune_vit-b-16_rbt-base.sh for why and what to edit).
set -euo pipefail

exec bash "$(dirname "$0")/finetune_vit-b-16_rbt-base.sh" MUGE "$@"
