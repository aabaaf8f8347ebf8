"""The headline path, as far as a CPU can take it: `bash run_scripts/pokemon_finetune_vit-b-16.sh
${DATAPATH}` with the real ViT-B-16 + RoBERTa-wwm-ext-base-chinese, started from a file in the
official release layout ({"state_dict"}, fp16, DDP's "module." keys; random weights made here, since
the released ones cannot be downloaded), through upstream's main, for one step.

About 188M parameters: ~4 GB of memory and ~5 GB of checkpoints in tmp_path (removed when the test
passes: setup.cfg sets tmp_path_retention_policy = failed), a minute or two on two
cores. It is the only test that builds the full-size model.
"""
import torch

from conftest import load_checkpoint, random_checkpoint, run_script


def test_vit_b16_run_script_takes_one_step_from_an_official_format_file(sprite_dataset, tmp_path):
    datapath = tmp_path / "data"
    (datapath / "datasets").mkdir(parents=True)
    (datapath / "datasets" / "pokemon").symlink_to(sprite_dataset, target_is_directory=True)
    weights = datapath / "pretrained_weights" / "clip_cn_vit-b-16.pt"
    random_checkpoint(weights, "ViT-B-16", "RoBERTa-wwm-ext-base-chinese", release=True)
    released = load_checkpoint(weights)["state_dict"]["module.visual.proj"]

    result = run_script(
        "pokemon_finetune_vit-b-16.sh", str(datapath),
        "--max-steps", "1", "--batch-size", "2", "--valid-batch-size", "2", "--precision", "fp32",
        "--num-workers", "0", "--valid-num-workers", "0", "--use-flash-attention",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log_text = result.stdout + result.stderr
    assert f"loaded checkpoint '{weights}'" in log_text
    run_dir = datapath / "experiments" / "pokemon_finetune_vit-b-16"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["epoch1.pt", "epoch_latest.pt"]
    latest = load_checkpoint(run_dir / "checkpoints" / "epoch_latest.pt")
    assert latest["step"] == 1
    assert latest["model_config"]["vision_model"] == "ViT-B-16"
    # upstream's key layout, although the run used the fast attention
    assert "module.visual.transformer.resblocks.0.attn.in_proj_weight" in latest["state_dict"]
    assert "module.bert.encoder.layer.0.attention.self.query.weight" in latest["state_dict"]
    # the one step moved the released weights
    key = "module.visual.proj"
    assert not torch.equal(latest["state_dict"][key], released.float())
