"""--max-minutes (patches/0032, cn_clip_pokemon/time_limit.py): upstream's own main stops at a
wall-clock limit as if its steps were done: the epoch ends, validation runs, the checkpoints are written,
the run ends; the learning-rate schedule follows the clock when the clock is further along than the steps."""
import argparse
import time

import pytest

from cn_clip_pokemon import time_limit
from conftest import load_checkpoint, read_metrics, run, train_command


def test_the_clock_starts_at_main_and_the_limit_passes():
    args = argparse.Namespace(max_minutes=None)
    time_limit.start_clock(args)
    assert args.stop_at is None and not time_limit.time_is_up(args)
    args = argparse.Namespace(max_minutes=1.0)
    before = time.time()
    time_limit.start_clock(args)
    assert before + 60 <= args.stop_at <= time.time() + 60
    assert not time_limit.time_is_up(args)
    args.stop_at = time.time() - 0.01
    assert time_limit.time_is_up(args)
    with pytest.raises(SystemExit, match="above 0"):
        time_limit.start_clock(argparse.Namespace(max_minutes=-1.0))


def test_the_schedule_is_as_far_along_as_the_steps_or_the_clock():
    args = argparse.Namespace(max_minutes=None, max_steps=100)
    time_limit.start_clock(args)
    assert time_limit.follow_the_clock(args, 7) == (7, False)  # no limit: upstream's schedule
    args = argparse.Namespace(max_minutes=10.0, max_steps=100)
    time_limit.start_clock(args)
    args.stop_at = time.time() + 300  # half of the limit has passed
    step, up = time_limit.follow_the_clock(args, 7)
    assert 50 <= step <= 51 and not up  # the clock is further along: half of the planned steps
    assert time_limit.follow_the_clock(args, 80) == (80, False)  # the steps are further along
    args.stop_at = time.time() - 1  # past the limit: the last planned step at most, and the run stops
    assert time_limit.follow_the_clock(args, 7) == (99, True)


def test_upstreams_main_stops_at_the_limit_validates_and_saves(runner, sprite_dataset, tmp_path):
    """A limit that has passed by the first step: one step is trained, then the epoch ends, validation
    runs once and the checkpoints say step 1, epoch 1, although 3 epochs were asked for."""
    logs = tmp_path / "logs"
    result = run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "3", "--max-minutes", "0.0001",
                               "--save-epoch-frequency", "1", val_data=sprite_dataset / "lmdb" / "valid"))
    output = result.stdout + result.stderr
    assert "Stopping training at step 1 of" in output and "--max-minutes 0.0001 reached" in output
    latest = load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")
    assert (latest["epoch"], latest["step"]) == (1, 1)
    assert sorted(p.name for p in (logs / "run" / "checkpoints").iterdir()) == ["epoch1.pt", "epoch_latest.pt"]
    records = read_metrics(logs)
    assert [r["step"] for r in records if r.get("split") == "train" and not r.get("epoch_end")] == [1]
    assert len([r for r in records if r.get("split") == "valid"]) == 1  # validated once, at the end


@pytest.mark.parametrize("limit", [[], ["--max-minutes", "10"]])
def test_without_a_limit_or_before_it_the_run_is_upstreams(runner, sprite_dataset, tmp_path, limit):
    """No limit, or one far off (minutes, not seconds): every planned step is trained."""
    logs = tmp_path / "logs"
    result = run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-steps", "3", *limit))
    assert "--max-minutes" not in result.stdout + result.stderr  # the limit's stop message never came
    assert load_checkpoint(logs / "run" / "checkpoints" / "epoch_latest.pt")["step"] == 3


def test_a_run_the_limit_ends_has_finished_its_schedule(runner, sprite_dataset, tmp_path):
    """10,000 steps planned, 15 seconds allowed: the limit stops the run long before its steps, and by
    then the learning rate has warmed up and come down its cosine as the clock went, to near zero
    (upstream's schedule, planned for 10,000 steps, would still be near its top)."""
    logs = tmp_path / "logs"
    result = run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-steps", "10000", "--max-minutes", "0.25"))
    assert "--max-minutes 0.25 reached" in result.stdout + result.stderr
    rates = [r["lr"] for r in read_metrics(logs) if r.get("split") == "train" and not r.get("epoch_end")]
    assert 3 <= len(rates) < 10000
    peak = rates.index(max(rates))
    assert max(rates) > 0.5 * 5e-3  # warmed up to near the base rate (5e-3)
    assert all(later <= earlier for earlier, later in zip(rates[peak:], rates[peak + 1:]))  # then only down
    assert rates[-1] < 0.1 * 5e-3, rates[-5:]  # and near zero at the end
