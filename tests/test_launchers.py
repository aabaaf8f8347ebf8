"""The registered launchers for real: `train --nproc-per-node 2` goes through TorchrunLauncher.launch,
which starts torchrun, whose two workers each run `python -m cn_clip_pokemon train` (gloo on the CPU)."""
import subprocess
import sys

from conftest import cpu_env, load_checkpoint, read_metrics, run, train_command


def test_nproc_per_node_2_runs_two_ranks_through_the_torchrun_launcher(sprite_dataset, tmp_path):
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "cn_clip_pokemon", "train",
        "--nproc-per-node", "2",
        "--train-data", str(sprite_dataset / "lmdb" / "train"),
        "--vision-model", "ViT-T-8-64",
        "--text-model", "RBT-Tiny-chinese",
        "--batch-size", "4",
        "--max-steps", "2",
        "--log-interval", "1",
        "--logs", str(logs),
        "--name", "run",
        "--device", "cpu",
    ]
    done = subprocess.run(command, env=cpu_env(), capture_output=True, text=True, timeout=600)
    log_text = done.stdout + done.stderr
    assert done.returncode == 0, log_text[-4000:]
    assert "Rank 0 |" in log_text and "Rank 1 |" in log_text  # both ranks logged
    assert "Global Batch Size: 8" in log_text
    steps = [m["step"] for m in read_metrics(logs) if m["split"] == "train" and not m.get("epoch_end")]
    assert steps == [1, 2]  # written once, by rank 0
    checkpoints = sorted(p.name for p in (logs / "run" / "checkpoints").iterdir())
    assert checkpoints == ["epoch1.pt", "epoch_latest.pt"]
    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")["step"] == 2


def test_train_warns_when_pictures_are_stored_below_the_models_resolution(sprite_dataset, capsys):
    from cn_clip_pokemon.launcher import prepare_upstream_argv

    train = str(sprite_dataset / "lmdb" / "train")
    prepare_upstream_argv(["--train-data", train, "--vision-model", "ViT-T-8-64", "--text-model", "RBT-Tiny-chinese"])
    assert "upscaled" not in capsys.readouterr().err  # stored at 64 px, the model takes 64
    prepare_upstream_argv(["--train-data", train, "--vision-model", "ViT-B-16", "--text-model", "RBT-Tiny-chinese"])
    err = capsys.readouterr().err
    assert "stores pictures at 64 px but --vision-model ViT-B-16 takes 224 px" in err and "--image-size 224" in err


def test_the_first_step_of_a_run_is_logged(runner, sprite_dataset, tmp_path):
    logs = tmp_path / "logs"
    command = train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-steps", "3")
    command[command.index("--log-interval") + 1] = "100"
    result = run(command)
    assert "Global Steps: 1/3" in result.stdout + result.stderr
    assert [m["step"] for m in read_metrics(logs) if not m.get("epoch_end")] == [1]
