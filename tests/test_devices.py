"""cn_clip_pokemon.devices: the one place that picks device, backend and ranks."""
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from cn_clip_pokemon.devices import autocast, check_device_name, decide_layout, grad_scaler, pick_device


def test_alone_on_a_cpu_is_one_gloo_process():
    layout = decide_layout({}, cuda_available=False, cuda_device_count=0)
    assert (layout.device, layout.backend, layout.rank, layout.local_rank, layout.world_size) == ("cpu", "gloo", 0, 0, 1)
    assert not layout.distributed


def test_alone_with_a_gpu_is_cuda_with_nccl_without_any_launcher():
    layout = decide_layout({}, cuda_available=True, cuda_device_count=1, nccl_available=True)
    assert (layout.device, layout.backend, layout.world_size) == ("cuda:0", "nccl", 1)


def test_a_gpu_without_nccl_falls_back_to_gloo():
    """A CUDA build of torch without NCCL (Windows, upstream #279) still trains, over gloo."""
    layout = decide_layout({}, cuda_available=True, cuda_device_count=1, nccl_available=False)
    assert (layout.device, layout.backend) == ("cuda:0", "gloo")


def test_torchrun_environment_gives_ranks_and_the_local_gpu():
    env = {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}
    layout = decide_layout(env, cuda_available=True, cuda_device_count=4, nccl_available=True)
    assert (layout.device, layout.backend, layout.rank, layout.local_rank, layout.world_size) == ("cuda:1", "nccl", 5, 1, 8)
    assert layout.distributed
    cpu = decide_layout(env, cuda_available=False, cuda_device_count=0)
    assert (cpu.device, cpu.backend, cpu.rank, cpu.world_size) == ("cpu", "gloo", 5, 8)


def test_device_can_be_forced_and_impossible_requests_say_why():
    assert decide_layout({}, requested="cpu", cuda_available=True, cuda_device_count=1).device == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        decide_layout({}, requested="cuda", cuda_available=False, cuda_device_count=0)
    with pytest.raises(RuntimeError, match="only 2 CUDA device"):
        decide_layout({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}, cuda_available=True, cuda_device_count=2)
    with pytest.raises(ValueError, match="RANK=4"):
        decide_layout({"WORLD_SIZE": "2", "RANK": "4"}, cuda_available=False, cuda_device_count=0)


def test_amp_is_fp16_on_cuda_and_bf16_on_a_cpu_that_has_it(monkeypatch):
    from cn_clip_pokemon import devices

    layer = torch.nn.Linear(8, 8)
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    with autocast(torch.device("cpu")):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    # emulated bf16 is many times slower than fp32: such a CPU trains in fp32
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    with autocast(torch.device("cpu")):
        assert layer(torch.randn(2, 8)).dtype == torch.float32
    assert devices.amp_dtype(torch.device("cuda", 0)) == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": only the dtype matters here
        assert autocast(torch.device("cuda", 0)).fast_dtype == torch.float16


def test_a_disabled_scaler_passes_upstreams_calls_through():
    layer = torch.nn.Linear(8, 8)
    assert grad_scaler(torch.device("cpu"), "fp32") is None
    cpu_scaler = grad_scaler(torch.device("cpu"), "amp")
    assert not cpu_scaler.is_enabled()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    loss = layer(torch.ones(1, 8)).sum()
    assert cpu_scaler.scale(loss) is loss
    loss.backward()
    before = layer.weight.detach().clone()
    cpu_scaler.step(optimizer)
    cpu_scaler.update()
    assert not torch.equal(before, layer.weight)


def test_fp16_amp_on_cuda_asks_for_an_enabled_scaler(monkeypatch):
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.append((device, enabled)))
    grad_scaler(torch.device("cuda", 1), "amp")
    grad_scaler(torch.device("cpu"), "amp")
    assert grad_scaler(torch.device("cuda", 1), "fp16") is None
    assert made == [("cuda", True), ("cpu", False)]


def test_a_single_process_gets_a_process_group_of_one_without_a_launcher():
    script = textwrap.dedent(
        """
        import os
        from argparse import Namespace
        import torch.distributed as dist
        from cn_clip_pokemon.devices import init_distributed_device
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(name, None)
        args = Namespace()
        layout = init_distributed_device(args)
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert (str(args.device), args.rank, args.world_size, args.local_device_rank) == ("cpu", 0, 1, 0)
        import torch
        t = torch.ones(3)
        dist.all_reduce(t)  # what upstream's evaluate does
        assert t.tolist() == [1.0, 1.0, 1.0]
        print("ok")
        """
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_device_is_an_argument_checked_in_one_place():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        decide_layout({}, requested="tpu", cuda_available=False, cuda_device_count=0)
    from cn_clip_pokemon.errors import UserError

    with pytest.raises(UserError, match="unknown device 'tpu'"):
        pick_device("tpu")
    assert str(pick_device("cpu")) == "cpu"
    import torch

    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_train_passes_device_as_a_flag_to_upstreams_parser():
    """No environment variable: the flag is upstream's (patches/0027), so torchrun workers get it in argv."""
    import os

    from cn_clip_pokemon import patching

    patching.install()
    from cn_clip.training.params import parse_args

    args = parse_args(["--train-data", "x", "--device", "cpu"])
    assert args.device_request == "cpu"
    assert not any(key.startswith("CN_CLIP_POKEMON_DEVICE") for key in os.environ)


def test_one_rule_names_a_device():
    for given, name in (("auto", None), ("", None), (None, None), (" CUDA:1 ", "cuda:1"), ("cpu", "cpu"), ("mps", "mps"), ("xpu:0", "xpu:0")):
        assert check_device_name(given) == name
    for wrong in ("tpu", "cpu:0", "cuda:", "cuda:x", "cuda:-1", "meta", "gpu"):
        with pytest.raises(ValueError, match=f"unknown device '{wrong}': use cpu, cuda or cuda:N \\(or auto\\)"):
            check_device_name(wrong)


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "pikachu.png", "--checkpoint", "missing.pt"],
        ["search", "皮卡丘", "--checkpoint", "missing.pt", "--dataset", "missing"],
        ["evaluate", "--checkpoint", "missing.pt", "--dataset", "missing"],
        ["serve", "--checkpoint", "missing.pt"],
        ["export-hf", "missing.pt", "out"],
        ["train", "--train-data", "missing", "--vision-model", "ViT-T-8-64", "--text-model", "RBT-Tiny-chinese"],
    ],
    ids=lambda argv: argv[0],
)
def test_every_command_refuses_an_unknown_device_while_parsing(argv, tmp_path, monkeypatch, capsys):
    """A usage error (exit 2) naming the device, before anything is read: a checkpoint or a dataset
    that does not exist would be an error (exit 1) of its own."""
    from cn_clip_pokemon.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--device", "tpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cn-clip-pokemon: error: argument --device: unknown device 'tpu': use cpu, cuda or cuda:N (or auto)"), error
    assert f"(see `cn-clip-pokemon {argv[0]}" in error and len(error.splitlines()) == 1, error
