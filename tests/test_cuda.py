"""What only a GPU can check: NCCL, fp16 amp with a GradScaler, DDP on a device, pinned memory, the
fast attention's kernels and the checkpoint loader on CUDA.

Every test is marked ``cuda`` and skipped, with the reason, when torch sees no CUDA device, so this
file never fails on a CPU. bench/gpu_check.sh runs it on a GPU machine (``pytest -m cuda
tests/test_cuda.py``). Training runs through the real ``cn-clip-pokemon train`` in a subprocess, with
the shipped tiny configs (ViT-T-8-64 / RBT-Tiny-chinese) on a small synthetic dataset built in
tmp_path by the builder (the sprites in ../shared are not on a GPU machine). A small runner records,
from inside that process, what the GradScaler, autocast, DDP and the data loader were given.
"""
import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: torch.cuda.is_available() is False"),
]

VISION, TEXT, CONTEXT = "ViT-T-8-64", "RBT-Tiny-chinese", 16
STEPS, BATCH, PICTURES = 4, 16, 64  # one epoch of four steps, so the run writes its checkpoint

# `cn-clip-pokemon train ...`, recording what training hands to torch (written at exit as JSON).
RUNNER = textwrap.dedent(
    """
    import atexit, json, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    REPORT = sys.argv.pop(1)
    seen = {"scaler": [], "autocast": [], "ddp": [], "loaders": []}

    original_scale = torch.amp.GradScaler.scale
    def scale(self, outputs):
        seen["scaler"].append({"enabled": self.is_enabled(), "loss_dtype": str(outputs.dtype)})
        return original_scale(self, outputs)
    torch.amp.GradScaler.scale = scale

    original_ddp_init = torch.nn.parallel.DistributedDataParallel.__init__
    def ddp_init(self, module, *args, **kwargs):
        device_ids = kwargs["device_ids"] if "device_ids" in kwargs else (args[0] if args else None)
        seen["ddp"].append({
            "device_ids": device_ids,
            "parameters": str(next(module.parameters()).device),
            "backend": dist.get_backend(),
        })
        original_ddp_init(self, module, *args, **kwargs)
    torch.nn.parallel.DistributedDataParallel.__init__ = ddp_init

    original_loader_init = DataLoader.__init__
    def loader_init(self, *args, **kwargs):
        original_loader_init(self, *args, **kwargs)
        seen["loaders"].append({"pin_memory": bool(self.pin_memory), "num_workers": self.num_workers})
    DataLoader.__init__ = loader_init

    from cn_clip_pokemon import patching
    patching.install()
    import cn_clip.training.train as train_module
    original_get_loss = train_module.get_loss
    def get_loss(model, images, texts, *args, **kwargs):
        seen["autocast"].append({
            "enabled": torch.is_autocast_enabled("cuda"),
            "dtype": str(torch.get_autocast_dtype("cuda")),
            "images": str(images.device),
        })
        return original_get_loss(model, images, texts, *args, **kwargs)
    train_module.get_loss = get_loss

    def write():
        with open(REPORT, "w") as f:
            json.dump(seen, f)
    atexit.register(write)

    from cn_clip_pokemon.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the working tree's package first, as the tests import it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for key in ("CN_CLIP_POKEMON_DEVICE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """64 one-colour pictures with distinct captions at 64 px, built by the builder (train only)."""
    folder, _ = _gpu_check_module().build_synthetic_dataset(tmp_path_factory.mktemp("cuda-data"), PICTURES, 64)
    return folder


def train(dataset, folder, *extra):
    """`cn-clip-pokemon train` for STEPS amp steps on CUDA through the recording runner."""
    runner = folder / "runner.py"
    runner.write_text(RUNNER)
    report = folder / "seen.json"
    logs = folder / "logs"
    command = [
        sys.executable, str(runner), str(report), "train",
        "--train-data", str(dataset / "lmdb" / "train"),
        "--vision-model", VISION,
        "--text-model", TEXT,
        "--context-length", str(CONTEXT),
        "--batch-size", str(BATCH),
        "--precision", "amp",
        "--lr", "1e-3",
        "--warmup", "1",
        "--max-steps", str(STEPS),
        "--log-interval", "1",
        "--num-workers", "1",
        "--logs", str(logs),
        "--name", "run",
        *extra,
    ]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\n{output[-4000:]}"
    seen = json.loads(report.read_text())
    metrics = [json.loads(line) for line in (logs / "run" / "metrics.jsonl").read_text().splitlines()]
    return {"output": output, "seen": seen, "metrics": metrics, "checkpoint": logs / "run" / "checkpoints" / "epoch_latest.pt"}


@pytest.fixture(scope="module")
def amp_run(dataset, tmp_path_factory):
    return train(dataset, tmp_path_factory.mktemp("amp-run"))


@pytest.fixture(scope="module")
def fast_run(dataset, tmp_path_factory):
    return train(dataset, tmp_path_factory.mktemp("fast-run"), "--use-flash-attention")


def test_process_group_of_one_uses_nccl(monkeypatch):
    import torch.distributed as dist

    from cn_clip_pokemon.devices import init_distributed_device

    for key in ("CN_CLIP_POKEMON_DEVICE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()
    args = argparse.Namespace()
    layout = init_distributed_device(args)
    try:
        assert layout.backend == "nccl"
        assert dist.get_backend() == "nccl"
        assert (args.device, args.rank, args.world_size, args.local_device_rank) == (torch.device("cuda", 0), 0, 1, 0)
        # what upstream's loss does with a group of one: all_gather and all_reduce on the device
        tensor = torch.arange(3.0, device=args.device)
        gathered = [torch.zeros_like(tensor)]
        dist.all_gather(gathered, tensor)
        dist.all_reduce(tensor)
        assert gathered[0].tolist() == tensor.tolist() == [0.0, 1.0, 2.0]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("run_name", ["amp_run", "fast_run"])
def test_amp_training_on_cuda(run_name, request):
    run = request.getfixturevalue(run_name)
    seen = run["seen"]
    assert "Use device: cuda:0" in run["output"]
    # DDP of one on the GPU, with its device id, over NCCL
    assert seen["ddp"] == [{"device_ids": [0], "parameters": "cuda:0", "backend": "nccl"}]
    # the training loader pins memory for the copy to the GPU
    assert seen["loaders"] and all(loader["pin_memory"] for loader in seen["loaders"]), seen["loaders"]
    # every step: fp16 autocast on CUDA and a loss scaled by an enabled GradScaler
    assert len(seen["autocast"]) == STEPS
    assert all(a == {"enabled": True, "dtype": "torch.float16", "images": "cuda:0"} for a in seen["autocast"]), seen["autocast"]
    assert len(seen["scaler"]) == STEPS and all(s["enabled"] for s in seen["scaler"]), seen["scaler"]
    steps = [m for m in run["metrics"] if m["split"] == "train" and not m.get("epoch_end")]
    assert [m["step"] for m in steps] == list(range(1, STEPS + 1))
    assert all(math.isfinite(m["loss"]) for m in steps), [m["loss"] for m in steps]
    assert run["checkpoint"].is_file()


def _tiny_models(use_flash_attention):
    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon.model_config_resolver import model_info_for

    info = dict(model_info_for(VISION, TEXT))
    info.pop("use_flash_attention", None)
    return CLIP(**info, use_flash_attention=use_flash_attention)


def test_fast_attention_equals_default_on_cuda():
    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.clip import tokenize
    from cn_clip.clip.model import convert_state_dict

    torch.manual_seed(0)
    default = _tiny_models(False)
    fast = _tiny_models(True)
    # upstream's own key conversion (in_proj_weight / query,key,value -> Wqkv), loaded strictly
    fast.load_state_dict(convert_state_dict(dict(default.state_dict())))
    assert any(type(m).__module__ == "cn_clip_pokemon.attention" for m in fast.modules())
    default, fast = default.cuda().eval(), fast.cuda().eval()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    # texts of different lengths: the text tower's padding mask matters
    texts = tokenize(["皮卡丘", "一张喷火龙的图片", "妙蛙种子和杰尼龟在河边一起玩", "色块一二三"], context_length=CONTEXT).cuda()

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        expected, got = default(images, texts), fast(images, texts)
    for want, have in zip(expected[:2], got[:2]):  # unit-norm image and text features
        want, have = want.float(), have.float()
        assert torch.allclose(want, have, atol=1e-2, rtol=1e-2), (want - have).abs().max().item()
        assert torch.nn.functional.cosine_similarity(want, have, dim=-1).min().item() > 0.999

    default.zero_grad()
    fast.zero_grad()
    losses = []
    for model in (default, fast):
        image_features, text_features, scale = model(images, texts)
        loss = (scale * image_features @ text_features.t()).logsumexp(dim=-1).mean()
        loss.backward()
        losses.append(loss.item())
    assert math.isclose(losses[0], losses[1], rel_tol=1e-4, abs_tol=1e-4), losses
    for name in ("visual.conv1.weight", "bert.embeddings.word_embeddings.weight", "text_projection"):
        want = dict(default.named_parameters())[name].grad
        have = dict(fast.named_parameters())[name].grad
        assert torch.allclose(want, have, atol=1e-4, rtol=1e-3), (name, (want - have).abs().max().item())


@pytest.mark.parametrize("run_name", ["amp_run", "fast_run"])
def test_load_model_on_cuda(run_name, request):
    from PIL import Image

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.clip import tokenize

    from cn_clip_pokemon.checkpoint import load_model

    run = request.getfixturevalue(run_name)
    model, preprocess = load_model(str(run["checkpoint"]), device="cuda")
    assert {p.device for p in model.parameters()} == {torch.device("cuda", 0)}
    image = preprocess(Image.new("RGB", (64, 64), (200, 30, 30))).unsqueeze(0).cuda()
    texts = tokenize(["色块一", "色块二"], context_length=CONTEXT).cuda()
    with torch.no_grad():
        image_features = model.encode_image(image)
        text_features = model.encode_text(texts)
    assert image_features.shape[0] == 1 and text_features.shape[0] == 2
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
