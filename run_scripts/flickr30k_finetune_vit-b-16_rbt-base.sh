#!/usr/bin/env bash
# Upstream's Flickr30k-CN fine-tuning (ViT-B-16 + RoBERTa-wwm-ext-base), made single-GPU: no
# torch.distributed.launch, no MASTER_ADDR/RANK to set by hand.
#
#   bash run_scripts/flickr30k_finetune_vit-b-16_rbt-base.sh ${DATAPATH} [more `cn-clip-pokemon train` flags]
#
# Needs (upstream's DATAPATH layout and data, see Chinese-CLIP's README):
#   ${DATAPATH}/datasets/Flickr30k-CN/lmdb/{train,valid}
#   ${DATAPATH}/pretrained_weights/clip_cn_vit-b-16.pt
# Writes ${DATAPATH}/experiments/flickr30k_finetune_vit-b-16_roberta-base_bs64_1gpu/. Run it again after an
# interruption: it continues from that run's epoch_latest.pt.
#
# What to edit: upstream used 8 GPUs x 128; one 24 GB GPU holds 64 with amp. Flags given after
# DATAPATH come last and win, e.g. `--nproc-per-node 8 --batch-size 128` for upstream's setting.
set -euo pipefail

exec bash "$(dirname "$0")/finetune_vit-b-16_rbt-base.sh" Flickr30k-CN "$@"
