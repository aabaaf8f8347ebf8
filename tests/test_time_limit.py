"""--max-minutes (patches/0032, cn_clip_pokemon/time_limit.py): upstream's own main stops at a wall-clock
limit as if its steps were done: the epoch ends, validation runs, the checkpoints are written, the run ends."""
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
