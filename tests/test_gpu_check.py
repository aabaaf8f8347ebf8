"""bench/gpu_check.py: its --smoke mode end to end (on whatever device is here), and its parts."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_reports_every_variant(tmp_path, gpu_check):
    import torch

    out = tmp_path / "results.json"
    # a budget above --smoke's 110 s default: a busy CI machine must not turn this into a timing test
    command = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--budget", "300"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    results = json.loads(out.read_text())
    assert results["mode"] == "smoke"
    assert set(results["stages"]) == {"tests", "dataset", "bench", "search"}

    tests = results["stages"]["tests"]
    if torch.cuda.is_available():
        assert tests["status"] == "ok", tests
    else:
        # every CUDA test is skipped, none fails, and the reason is given
        assert tests["status"] == "skipped" and tests["counts"]["failed"] == 0 and tests["counts"]["skipped"] > 0
        assert all("CUDA" in test["message"] for test in tests["tests"])

    variants = results["stages"]["bench"]["variants"]
    assert set(variants) == set(gpu_check.VARIANTS)
    ran = ["launcher", "fast"]
    if torch.cuda.is_available():
        ran.append("upstream")
    else:
        assert variants["upstream"]["status"] == "skipped" and "CUDA" in variants["upstream"]["reason"]
    for kind in ran:
        record = variants[kind]
        assert record["status"] == "ok", (kind, record.get("reason"), record.get("output_tail"))
        assert record["samples_per_second"] > 0 and record["median_step_s"] > 0
        assert record["timed_steps"] == results["settings"]["timed_steps"]
        assert record["peak_rss_mib"] > 0
        if torch.cuda.is_available():
            assert record["peak_gpu_mib"] > 0
    assert variants["fast"]["speed_vs_launcher"] > 0

    search = results["stages"]["search"]
    assert search["status"] == "ok", search
    assert search["largest_batch_that_fits"] >= results["settings"]["search_start"]
    assert search["trials"] and all(trial["outcome"] == "fits" for trial in search["trials"])

    # the markdown table: a header and one row per variant
    assert "| variant | status | samples/s | vs upstream | peak GPU MiB | vs upstream | peak RSS MiB | wall s |" in result.stdout
    for label in gpu_check.VARIANT_LABELS.values():
        assert f"| {label} | " in result.stdout
    assert "Largest ViT-T-8-64 + RBT-Tiny-chinese batch with --grad-checkpointing" in result.stdout
    assert (out.with_suffix(".log")).read_text()  # every run's output, for a failure on a GPU machine


def test_search_doubles_then_bisects(gpu_check):
    next_batch = gpu_check.next_batch
    fits_up_to = 3000  # a GPU on which batches up to 3000 fit
    fits, fails, tried = [], [], []
    batch = next_batch(fits, fails, 256, 8192, 16)
    while batch is not None:
        tried.append(batch)
        (fits if batch <= fits_up_to else fails).append(batch)
        batch = next_batch(fits, fails, 256, 8192, 16)
    assert tried[:5] == [256, 512, 1024, 2048, 4096]  # doubling until the first failure
    assert max(fits) <= fits_up_to < min(fails)
    assert min(fails) - max(fits) <= max(fits) // 8  # bisected to within 1/8
    assert len(tried) <= 9


def test_search_stops_at_the_cap_and_halves_when_the_start_fails(gpu_check):
    next_batch = gpu_check.next_batch
    assert next_batch([8], [], 8, 16, 1) == 16
    assert next_batch([8, 16], [], 8, 16, 1) is None  # everything fits up to the cap
    assert next_batch([], [1024], 1024, 8192, 64) == 512  # the first batch already failed
    assert next_batch([], [1], 1, 8192, 1) is None


def test_step_lines_give_samples_per_second_after_warmup(gpu_check):
    line = (
        "2026-12-01,00:05:37 | INFO | Rank 0 | Global Steps: {step}/6 | Train Epoch: 1 [8/64 (12%)] | "
        "Loss: 2.212073 | Data Time: 0.059s | Batch Time: {time}s | LR: 0.000010 | logit_scale: 2.659 | "
        "Global Batch Size: 8"
    )
    output = "\n".join(line.format(step=step, time=time) for step, time in [(1, "7.500"), (2, "1.000"), (3, "0.500"), (4, "0.500")])
    steps = gpu_check.parse_steps(output)
    assert steps == {1: (7.5, 8), 2: (1.0, 8), 3: (0.5, 8), 4: (0.5, 8)}
    samples_per_second, median_step, timed = gpu_check.throughput(steps, warmup_steps=2)
    assert (samples_per_second, median_step, timed) == (16.0, 0.5, 2)
    assert gpu_check.throughput(steps, warmup_steps=4) == (None, None, 0)


def test_budget_keeps_time_for_later_stages(gpu_check):
    now = [0.0]
    budget = gpu_check.Budget(100, clock=lambda: now[0])
    assert budget.timeout(60, keep=30) == 60
    now[0] = 50
    assert budget.timeout(60, keep=30) == 20
    now[0] = 99
    assert budget.timeout(60, keep=30) == 0
