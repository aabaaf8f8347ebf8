"""Upstream's real cn_clip.training.main, run through `cn-clip-pokemon train` on the CPU.

Training runs in subprocesses (as a user runs it, and so a run can be killed) with a test-only
model config far smaller than the shipped tiny one, registered by a throwaway plugin, on the small
real sprite dataset (tests/conftest.py: #1-25, 8 pictures each, 64 px).
"""
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace

import lmdb
import pytest

from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.sampler import UniqueGroupBatchSampler, duplicate_groups
from conftest import cpu_env, load_checkpoint, read_metrics, run, run_script, train_command


def train_pairs(dataset_dir, split="train"):
    env = lmdb.open(str(dataset_dir / "lmdb" / split / "pairs"), readonly=True, lock=False)
    with env.begin() as txn:
        count = int(txn.get(b"num_samples"))
        pairs = [pickle.loads(txn.get(str(i).encode())) for i in range(count)]
    env.close()
    return pairs


def test_training_learns_and_writes_upstream_checkpoints(runner, sprite_dataset, tmp_path):
    logs = tmp_path / "logs"
    result = run(train_command(
        runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "5", "--precision", "fp32",
        val_data=sprite_dataset / "lmdb" / "valid",
    ))
    log_text = result.stdout + result.stderr
    assert "Use device: cpu" in log_text

    metrics = read_metrics(logs)
    epochs = [m for m in metrics if m.get("epoch_end")]
    valid = [m for m in metrics if m["split"] == "valid"]
    steps = [m for m in metrics if m["split"] == "train" and not m.get("epoch_end")]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4, 5]
    assert len(valid) == 5
    assert {"epoch", "step", "loss", "i2t_acc", "t2i_acc", "lr", "logit_scale", "time"} <= set(steps[0])
    # the loss falls from chance, ln(8) = 2.08, to clearly below it (by 0.26 to 0.55 over the seeds
    # tried: the first epochs of a CLIP from scratch can sit on the plateau)
    assert epochs[-1]["loss"] < epochs[0]["loss"] - 0.15, [m["loss"] for m in epochs]
    assert epochs[-1]["i2t_acc"] > epochs[0]["i2t_acc"]
    assert [m["step"] for m in steps] == list(range(1, len(steps) + 1))

    checkpoints = logs / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        [f"epoch{i}.pt" for i in range(1, 6)] + ["epoch_latest.pt"]
    )  # and no half-written temporary file left behind
    latest = load_checkpoint(checkpoints / "epoch_latest.pt")
    assert set(latest) == {"epoch", "step", "name", "state_dict", "optimizer", "model_config", "captions", "framing"}
    assert latest["framing"] == "as-is"  # the dataset was built with its pictures as they are
    # the captions of its dataset (every Pokemon of every split), the names classify ranks by default
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert latest["captions"] == info["names"] and len(latest["captions"]) == 25
    assert (latest["epoch"], latest["step"], latest["name"]) == (5, len(steps), "run")
    assert all(key.startswith("module.") for key in latest["state_dict"])

    # the checkpoint alone rebuilds its model
    from cn_clip.clip.model import CLIP

    config = latest["model_config"]
    assert (config["vision_model"], config["text_model"], config["input_resolution"]) == ("ViT-Test-32", "RBT-Test", 32)
    model = CLIP(**config["model_info"])
    state = {key[len("module."):]: value for key, value in latest["state_dict"].items()}
    model.load_state_dict(state, strict=True)


def test_killed_run_resumes_from_the_latest_checkpoint(runner, sprite_dataset, tmp_path):
    logs = tmp_path / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "4")
    latest = logs / "run" / "checkpoints" / "epoch_latest.pt"
    process = subprocess.Popen(command, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert latest.exists(), process.communicate(timeout=30)[0][-3000:] if process.poll() is not None else "no checkpoint"
        process.send_signal(signal.SIGKILL)  # no chance to clean up, as a crash or a preempted job
    finally:
        process.kill()
        process.wait(timeout=30)

    saved = load_checkpoint(latest)
    assert saved["epoch"] < 4, "the run finished before it could be interrupted"
    steps_per_epoch = saved["step"] // saved["epoch"]

    restarted = time.time()
    result = run(command)  # the same command again
    log_text = result.stdout + result.stderr
    assert f"loaded checkpoint '{latest}' (epoch {saved['epoch']} @ {saved['step']} steps)" in log_text
    assert "optimizer state is restored" in log_text
    final = load_checkpoint(latest)
    assert (final["epoch"], final["step"]) == (4, 4 * steps_per_epoch)

    resumed = [m for m in read_metrics(logs) if m["time"] >= restarted]
    first = min(m["step"] for m in resumed)
    assert first == saved["step"] + 1, "the resumed run must continue at the next step"
    assert min(m["epoch"] for m in resumed) == saved["epoch"] + 1


def test_every_batch_of_an_epoch_has_distinct_texts(sprite_dataset):
    """The pokemon plugin's batches, for each of 2 ranks and through upstream's LMDBDataset."""
    from cn_clip_pokemon import patching, plugins
    from cn_clip_pokemon.default_plugins.pokemon_dataset import pair_groups

    patching.install()
    train = sprite_dataset / "lmdb" / "train"
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    pairs = train_pairs(sprite_dataset)
    pokemon_of_pair = [info["images"][str(image_id)]["number"] for image_id, _, _ in pairs]
    texts_of_pair = [text for _, _, text in pairs]
    # grouped by Pokemon (dataset_info.json), which also keeps texts apart
    groups = pair_groups(train)
    assert groups == tuple(("pokemon", number) for number in pokemon_of_pair)
    for epoch in (0, 1):
        ranks = [UniqueGroupBatchSampler(groups, 8, num_replicas=2, rank=rank, seed=123) for rank in (0, 1)]
        for sampler in ranks:
            sampler.set_epoch(epoch)
        rank_batches = [list(sampler) for sampler in ranks]
        assert len(rank_batches[0]) == len(rank_batches[1]) == len(ranks[0])
        for batch_0, batch_1 in zip(*rank_batches):
            whole = batch_0 + batch_1  # upstream gathers both ranks' features into one batch
            assert len(batch_0) == len(batch_1) == 8
            assert not duplicate_groups(pokemon_of_pair, whole)
            assert not duplicate_groups(texts_of_pair, whole)
        assert {i for b in rank_batches[0] + rank_batches[1] for i in b} == set(range(len(pairs)))

    # the loader the plugin gives upstream's training: every batch's tokenized texts are distinct
    args = Namespace(
        train_data=str(train), batch_size=16, use_augment=False, vision_model="ViT-T-8-64",
        seed=0, num_workers=0, device=None,
    )
    data = plugins.get_datasets()["pokemon"].get_dataset(args, is_train=True, max_txt_length=16, epoch_id=0)
    count = 0
    for images, texts, _ in data.dataloader:
        assert images.shape[0] == texts.shape[0] == 16
        assert len({tuple(row.tolist()) for row in texts}) == 16
        count += 1
    assert count == data.dataloader.num_batches == -(-len(pairs) // 16)
    assert data.dataloader.num_samples == count * 16


@pytest.fixture
def five_texts(tmp_path):
    """An upstream-format dataset (TSV + JSONL -> upstream's build_lmdb_dataset.py) of 5 texts."""
    import base64
    import io

    from PIL import Image

    folder = tmp_path / "five"
    folder.mkdir()
    colours = ["red", "green", "blue", "yellow", "black"]
    texts = ["红色", "绿色", "蓝色", "黄色", "黑色"]
    image_id = 0
    with open(folder / "train_imgs.tsv", "w") as images, open(folder / "train_texts.jsonl", "w") as jsonl:
        for text_id, (colour, text) in enumerate(zip(colours, texts)):
            ids = []
            for shade in range(3):  # three pictures per text
                buffer = io.BytesIO()
                Image.new("RGB", (16, 16), colour).rotate(shade * 30).save(buffer, "PNG")
                images.write(f"{image_id}\t{base64.urlsafe_b64encode(buffer.getvalue()).decode()}\n")
                ids.append(image_id)
                image_id += 1
            jsonl.write(json.dumps({"text_id": text_id, "text": text, "image_ids": ids}, ensure_ascii=False) + "\n")
    subprocess.run(
        [sys.executable, "-m", "cn_clip.preprocess.build_lmdb_dataset", "--data_dir", str(folder), "--splits", "train"],
        check=True, capture_output=True,
    )
    return folder


def test_a_dataset_smaller_than_a_batch_trains_with_a_smaller_batch(runner, five_texts, tmp_path):
    logs = tmp_path / "logs"
    result = run(train_command(
        runner, five_texts / "lmdb" / "train", logs, "--dataset", "pokemon", "--max-epochs", "2",
        "--batch-size", "64",
    ))
    assert "batches shrink to 5 per process" in result.stdout + result.stderr
    steps = [m for m in read_metrics(logs) if not m.get("epoch_end")]
    # 15 pairs, batches of the 5 distinct texts: 3 steps an epoch
    assert [m["step"] for m in steps] == list(range(1, 7))
    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")["step"] == 6


# --- the sampler on its own ----------------------------------------------------------------------


def test_sampler_never_repeats_a_group_and_uses_every_pair():
    import random

    rng = random.Random(0)
    groups = [rng.randrange(40) for _ in range(1000)] + [7] * 30  # one text with many pictures
    sampler = UniqueGroupBatchSampler(groups, batch_size=8, num_replicas=3, rank=0, seed=5)
    assert sampler.global_batch_size == 24 and len(sampler) == -(-1030 // 24)
    batches = sampler.global_batches(0)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == 24 and not duplicate_groups(groups, batch.tolist())
    used = {int(i) for b in batches for i in b}
    # every pair except the part of a group beyond one per batch
    overflow = sum(max(0, groups.count(g) - len(sampler)) for g in set(groups))
    assert len(used) == len(groups) - overflow


def test_sampler_ranks_split_each_global_batch_and_epochs_differ():
    groups = [i % 50 for i in range(500)]
    ranks = [UniqueGroupBatchSampler(groups, 5, num_replicas=2, rank=r, seed=1) for r in (0, 1)]
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        per_rank = [list(s) for s in ranks]
        for a, b, whole in zip(*per_rank, ranks[0].global_batches(epoch)):
            assert a + b == whole.tolist() and not set(a) & set(b)
    assert list(ranks[0]) == list(ranks[0])  # same epoch, same batches
    ranks[0].set_epoch(0)
    first = list(ranks[0])
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != first


def test_sampler_picks_different_pictures_of_a_crowded_group_each_epoch():
    # group 0 has 40 pictures but an epoch has only 10 batches: 10 of them per epoch, not the same 10
    groups = [0] * 40 + list(range(1, 71))
    sampler = UniqueGroupBatchSampler(groups, 11, seed=0)
    assert len(sampler) == 10
    chosen = []
    for epoch in range(4):
        used = {int(i) for b in sampler.global_batches(epoch) for i in b if groups[i] == 0}
        assert len(used) == 10
        chosen.append(used)
    assert len(set().union(*chosen)) > 20


def test_sampler_with_fewer_texts_than_processes_does_not_crash():
    sampler = UniqueGroupBatchSampler(["a", "b", "a"], 4, num_replicas=3, rank=2, seed=0)
    assert sampler.batch_size == 1 and len(list(sampler)) == len(sampler) == 1


# --- the launcher's checks, before any model is built --------------------------------------------


def test_missing_training_data_names_the_path_and_the_command(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "lmdb" / "train"
    assert cli_main(["train", "--train-data", str(missing)]) == 1
    error = capsys.readouterr().err
    assert str(missing) in error and "cn-clip-pokemon build-dataset" in error
    assert "Traceback" not in error


def test_missing_weights_and_unknown_models_are_reported(sprite_dataset, tmp_path, capsys):
    train = str(sprite_dataset / "lmdb" / "train")
    weights = tmp_path / "pretrained_weights" / "clip_cn_vit-b-16.pt"
    assert cli_main(["train", "--train-data", train, "--clip-weight-path", str(weights)]) == 1
    error = capsys.readouterr().err
    assert str(weights) in error and "clip_cn_vit-b-16.pt" in error
    assert cli_main(["train", "--train-data", train, "--vision-model", "ViT-Q-99"]) == 1
    error = capsys.readouterr().err
    assert "ViT-Q-99" in error and "ViT-B-16" in error and "ViT-T-8-64" in error
    assert cli_main(["train", "--train-data", train, "--dataset", "cats"]) == 1
    assert "pokemon" in capsys.readouterr().err


def test_pretrained_weights_must_exist_and_exclude_resume(sprite_dataset, tmp_path, capsys):
    train = str(sprite_dataset / "lmdb" / "train")
    weights = tmp_path / "pretrained_weights" / "clip_cn_vit-b-16.pt"
    assert cli_main(["train", "--train-data", train, "--pretrained", str(weights)]) == 1
    assert f"{weights} not found" in capsys.readouterr().err
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert cli_main(["train", "--train-data", train, "--pretrained", str(weights), "--resume", str(weights)]) == 2
    error = capsys.readouterr().err
    assert "give one" in error and len(error.strip().splitlines()) == 1  # bad usage: one line, exit 2


def test_pretrained_starts_a_run_once_then_the_run_continues_itself(runner, sprite_dataset, tmp_path):
    train = sprite_dataset / "lmdb" / "train"
    run(train_command(runner, train, tmp_path / "earlier", "--max-steps", "2"))
    weights = tmp_path / "pretrained_weights" / "weights.pt"  # upstream's checkpoint format, module. keys
    weights.parent.mkdir()
    shutil.copy(tmp_path / "earlier" / "run" / "checkpoints" / "epoch_latest.pt", weights)

    logs = tmp_path / "logs"
    command = train_command(runner, train, logs, "--pretrained", str(weights), "--max-steps", "2")
    result = run(command)
    log_text = result.stdout + result.stderr
    assert f"loaded checkpoint '{weights}'" in log_text
    assert "optimizer state is restored" not in log_text  # --reset-optimizer
    assert [m["step"] for m in read_metrics(logs) if not m.get("epoch_end")] == [1, 2]  # --reset-data-offset

    result = run(command)  # the same command again: this run's own checkpoint, not the weights
    latest = logs / "run" / "checkpoints" / "epoch_latest.pt"
    log_text = result.stdout + result.stderr
    assert f"loaded checkpoint '{latest}'" in log_text and f"'{weights}'" not in log_text
    assert "optimizer state is restored" in log_text


def test_help_shows_our_flags_and_upstreams(capsys):
    assert cli_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--nproc-per-node", "--master-port", "--device", "--train-data", "--max-epochs", "--dataset", "--precision"):
        assert flag in out


def test_many_processes_go_through_torchrun():
    from cn_clip_pokemon.default_plugins.launchers import torchrun_command
    from cn_clip_pokemon.launcher import launcher_parser

    options, rest = launcher_parser().parse_known_args(["--nproc-per-node", "4", "--train-data", "x", "--name", "n"])
    command = torchrun_command(options, rest)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=4" in command and "--standalone" in command
    assert command[-8:] == ["-m", "--", "cn_clip_pokemon", "train", "--train-data", "x", "--name", "n"]
    options, rest = launcher_parser().parse_known_args(
        ["--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500", "--name", "n"]
    )
    command = torchrun_command(options, rest)
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500"} <= set(command)
    assert "--standalone" not in command


def test_two_cpu_processes_under_torchrun(runner, sprite_dataset, tmp_path):
    """gloo, DDP and the sampler's rank split for real: 2 processes, 2 steps.

    torchrun starts the runner script itself here (each worker then trains in-process, as the
    workers of `--nproc-per-node 2` do): the workers of `--nproc-per-node` run `python -m
    cn_clip_pokemon`, which would not have the runner's test model configs."""
    logs = tmp_path / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-steps", "2", "--batch-size", "4")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--"]
    result = run(torchrun + command[1:], timeout=240)
    log_text = result.stdout + result.stderr
    assert "Rank 1 |" in log_text and "Global Batch Size: 8" in log_text
    steps = [m for m in read_metrics(logs) if not m.get("epoch_end")]
    assert [m["step"] for m in steps] == [1, 2]  # written once, by rank 0
    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")["step"] == 2


# --- run_scripts/ --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, dataset",
    [
        ("pokemon_finetune_vit-b-16.sh", "pokemon"),
        ("muge_finetune_vit-b-16_rbt-base.sh", "MUGE"),
        ("flickr30k_finetune_vit-b-16_rbt-base.sh", "Flickr30k-CN"),
        ("pokemon_finetune_tiny_cpu.sh", "pokemon"),
    ],
)
def test_run_scripts_say_what_is_missing_before_starting(script, dataset, tmp_path):
    result = run_script(script)
    assert result.returncode != 0 and "usage" in result.stderr
    datapath = tmp_path / "data"
    result = run_script(script, str(datapath))
    assert result.returncode == 1
    assert f"{datapath}/datasets/{dataset}/lmdb/train not found" in result.stderr
    if "vit-b-16" in script:  # the dataset is there, the pretrained weights are not
        (datapath / "datasets" / dataset / "lmdb" / "train").mkdir(parents=True)
        result = run_script(script, str(datapath))
        assert result.returncode == 1
        assert f"{datapath}/pretrained_weights/clip_cn_vit-b-16.pt not found" in result.stderr


def test_tiny_cpu_script_trains_with_extra_flags_passed_through(sprite_dataset, tmp_path):
    datapath = tmp_path / "data"
    (datapath / "datasets").mkdir(parents=True)
    (datapath / "datasets" / "pokemon").symlink_to(sprite_dataset, target_is_directory=True)
    result = run_script("pokemon_finetune_tiny_cpu.sh", str(datapath), "--max-steps", "2", "--batch-size", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = datapath / "experiments" / "pokemon_tiny_cpu"
    latest = load_checkpoint(run_dir / "checkpoints" / "epoch_latest.pt")
    assert latest["step"] == 2
    from cn_clip_pokemon.demo_recipes import TINY, recipe_flag

    assert latest["model_config"]["vision_model"] == recipe_flag(TINY, "--vision-model")  # the script's, the demo's
