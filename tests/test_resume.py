"""Where training starts (patches/0013-0016, cn_clip_pokemon/resume.py), through upstream's real main.

- a run killed with kill -9 after a step checkpoint, then run again, ends with the same weights and
  the same per-step losses as an uninterrupted run (so it trained the same batches, in order);
- --resume / --pretrained read every checkpoint shape: unpatched upstream's (numpy learning rates),
  a bare state dict, the official release layout; a pickle that would run code is refused;
- the run's own epoch_latest.pt of another architecture is named, not 40 size mismatches;
- --keep-checkpoints N; a split with zero rows is refused before a model is built.
"""
import os
import pickle
import signal
import subprocess
import time
from collections import OrderedDict

import lmdb
import numpy as np
import pytest
import torch

from conftest import cpu_env, load_checkpoint, read_metrics, run, train_command

from cn_clip_pokemon.checkpoint_sources import read_checkpoint
from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.resume import TrainingCheckpoint, data_position, prune_checkpoints


def step_losses(logs):
    return {m["step"]: m["loss"] for m in read_metrics(logs) if m["split"] == "train" and not m.get("epoch_end")}


def weights(path):
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), key


@pytest.fixture(scope="module")
def uninterrupted(runner, sprite_dataset, tmp_path_factory):
    """Two epochs with a step checkpoint every 5 steps, never interrupted: the reference."""
    logs = tmp_path_factory.mktemp("uninterrupted") / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "2", "--save-step-frequency", "5")
    run(command)
    return logs


def test_step_checkpoint_resumes_at_the_next_batch_of_the_same_epoch(runner, sprite_dataset, uninterrupted, tmp_path):
    reference = uninterrupted / "run" / "checkpoints"
    step_checkpoint = load_checkpoint(reference / "epoch_1_5.pt")
    final = load_checkpoint(reference / "epoch_latest.pt")
    steps_per_epoch = final["step"] // 2
    assert steps_per_epoch > 5, "the test needs a step checkpoint inside the first epoch"
    assert (step_checkpoint["epoch"], step_checkpoint["step"]) == (1, 5)

    # as if killed right after epoch_1_5.pt: that file is the run's latest
    logs = tmp_path / "logs"
    (logs / "run" / "checkpoints").mkdir(parents=True)
    torch.save(step_checkpoint, logs / "run" / "checkpoints" / "epoch_latest.pt")
    result = run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "2", "--save-step-frequency", "5"))
    log_text = result.stdout + result.stderr
    assert "Continuing epoch 1 at batch 6 of" in log_text
    resumed = step_losses(logs)
    assert min(resumed) == 6 and max(resumed) == 2 * steps_per_epoch
    expected = step_losses(uninterrupted)
    for step, loss in resumed.items():
        assert loss == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    epoch_ends = [m for m in read_metrics(logs) if m.get("epoch_end")]
    assert [m["step"] for m in epoch_ends] == [steps_per_epoch, 2 * steps_per_epoch]
    assert_same_weights(weights(logs / "run" / "checkpoints" / "epoch_latest.pt"), final["state_dict"])


def test_kill_9_after_a_step_checkpoint_then_rerun_equals_an_uninterrupted_run(runner, sprite_dataset, uninterrupted, tmp_path):
    logs = tmp_path / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "2", "--save-step-frequency", "5")
    latest = logs / "run" / "checkpoints" / "epoch_latest.pt"  # written right after epoch_1_5.pt
    process = subprocess.Popen(command, env=cpu_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert latest.exists(), "no step checkpoint was written"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
    saved = load_checkpoint(latest)
    assert saved["step"] < max(step_losses(uninterrupted)), "the run finished before the kill"

    run(command)
    reference = uninterrupted / "run" / "checkpoints" / "epoch_latest.pt"
    assert_same_weights(weights(logs / "run" / "checkpoints" / "epoch_latest.pt"), weights(reference))
    expected = step_losses(uninterrupted)
    steps = [m for m in read_metrics(logs) if m["split"] == "train" and not m.get("epoch_end")]
    for record in steps:  # the killed run's steps and the rerun's, each the same batch as the reference
        assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-5, abs=1e-6), record["step"]
    epoch_ends = [m["step"] for m in read_metrics(logs) if m.get("epoch_end")]
    assert len(set(epoch_ends)) == len(set(m["epoch"] for m in read_metrics(logs) if m.get("epoch_end")))


def test_data_position_from_the_global_step():
    def position(epoch, step, per_epoch=10):
        return data_position(TrainingCheckpoint("x.pt", OrderedDict(), epoch, step, None, None), per_epoch)

    assert position(1, 5) == (0, 5, 5)  # epoch_1_5.pt: epoch 1 continues at its 6th step
    assert position(1, 10) == (1, 10, 0)  # end of epoch 1
    assert position(3, 25) == (2, 25, 5)
    assert position(None, 0) == (0, 0, 0)
    assert position(None, None) == (0, 0, 0)  # a weights-only file starts at the beginning
    assert position(5, 12) == (5, 12, 0)  # steps per epoch changed since: the epoch count wins


def test_keep_checkpoints_keeps_the_newest(tmp_path):
    names = ["epoch1.pt", "epoch2.pt", "epoch10.pt", "epoch_1_5.pt", "epoch_2_15.pt", "epoch_10_5.pt", "epoch_latest.pt", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = prune_checkpoints(tmp_path, 1)
    assert sorted(removed) == ["epoch1.pt", "epoch2.pt", "epoch_1_5.pt", "epoch_2_15.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch10.pt", "epoch_10_5.pt", "epoch_latest.pt", "notes.txt"]
    assert prune_checkpoints(tmp_path, None) == []


def test_keep_checkpoints_in_a_real_run(runner, sprite_dataset, tmp_path):
    logs = tmp_path / "logs"
    run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "3", "--save-step-frequency", "4", "--keep-checkpoints", "1"))
    names = sorted(p.name for p in (logs / "run" / "checkpoints").iterdir())
    assert names[0] == "epoch3.pt" and names[-1] == "epoch_latest.pt" and len(names) == 3, names
    assert names[1].startswith("epoch_3_")


def unpatched_upstream_checkpoint(source, destination):
    """What unpatched upstream training writes: no model_config, numpy learning rates."""
    checkpoint = load_checkpoint(source)
    del checkpoint["model_config"]
    for group in checkpoint["optimizer"]["param_groups"]:
        group["lr"] = np.float64(group["lr"])
        group["initial_lr"] = np.float64(group.get("initial_lr", group["lr"]))
    torch.save(checkpoint, destination)
    with pytest.raises(Exception, match="numpy"):  # what upstream's own resume meets today
        torch.load(destination, map_location="cpu", weights_only=True)


def test_resume_reads_unpatched_upstream_and_bare_state_dicts(runner, sprite_dataset, uninterrupted, tmp_path):
    train = sprite_dataset / "lmdb" / "train"
    upstream_file = tmp_path / "upstream.pt"
    unpatched_upstream_checkpoint(uninterrupted / "run" / "checkpoints" / "epoch1.pt", upstream_file)
    result = run(train_command(runner, train, tmp_path / "a", "--resume", str(upstream_file), "--max-epochs", "2"))
    log_text = result.stdout + result.stderr
    assert "optimizer state is restored" in log_text
    assert f"loaded checkpoint '{upstream_file}' (epoch 1 @" in log_text
    assert min(step_losses(tmp_path / "a")) == read_checkpoint(upstream_file)["step"] + 1

    bare = tmp_path / "bare.pt"  # a raw state dict without DDP's prefix: weights only
    state = read_checkpoint(upstream_file)["state_dict"]
    torch.save(OrderedDict((k[len("module."):], v.half()) for k, v in state.items()), bare)
    result = run(train_command(runner, train, tmp_path / "b", "--resume", str(bare), "--max-steps", "2"))
    log_text = result.stdout + result.stderr
    assert "records no epoch/step" in log_text and "holds no optimizer state" in log_text
    assert sorted(step_losses(tmp_path / "b")) == [1, 2]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pretrained_that_would_run_code_is_refused(sprite_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "clip_cn_vit-b-16.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(1)}, "extra": RunsCode()}, evil)
    code = cli_main(["train", "--train-data", str(sprite_dataset / "lmdb" / "train"), "--pretrained", str(evil),
                     "--logs", str(tmp_path / "logs"), "--device", "cpu", "--vision-model", "ViT-T-8-64", "--text-model", "RBT-Tiny-chinese"])
    err = capsys.readouterr().err
    assert code == 1
    assert not (tmp_path / "PWNED").exists()
    assert "refusing to load" in err and "weights_only=False" not in err and "Traceback" not in err


def test_rerun_with_another_architecture_names_the_run_checkpoint(runner, sprite_dataset, tmp_path):
    train = sprite_dataset / "lmdb" / "train"
    logs = tmp_path / "logs"
    run(train_command(runner, train, logs, "--max-steps", "1"))
    command = train_command(runner, train, logs, "--max-steps", "1")
    command[command.index("ViT-Test-32")] = "ViT-T-8-64"
    command[command.index("RBT-Test")] = "RBT-Tiny-chinese"
    result = subprocess.run(command, env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    latest = logs / "run" / "checkpoints" / "epoch_latest.pt"
    assert f"{latest} is this run's own checkpoint" in result.stderr
    assert "ViT-Test-32 + RBT-Test" in result.stderr and "another --name" in result.stderr
    assert "size mismatch" not in result.stderr and "Traceback" not in result.stderr


def test_a_split_with_no_rows_is_refused(tmp_path, capsys):
    split = tmp_path / "empty" / "lmdb" / "train"
    for part in ("pairs", "imgs"):
        (split / part).mkdir(parents=True)
        env = lmdb.open(str(split / part), map_size=1 << 20)
        with env.begin(write=True) as txn:
            txn.put(b"num_samples" if part == "pairs" else b"num_images", b"0")
        env.close()
    code = cli_main(["train", "--train-data", str(split), "--device", "cpu", "--vision-model", "ViT-T-8-64", "--text-model", "RBT-Tiny-chinese"])
    err = capsys.readouterr().err
    assert code == 1 and f"{split} holds no image-text pairs" in err


def test_accumulated_batches_train_and_resume(runner, sprite_dataset, tmp_path):
    """--accum-freq (the one-GPU recipe of the MUGE / Flickr30k-CN scripts) through upstream's main."""
    logs = tmp_path / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--accum-freq", "2", "--batch-size", "4", "--max-steps", "3")
    run(command)
    first = step_losses(logs)
    assert sorted(first) == [1, 2, 3]
    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")["step"] == 3
