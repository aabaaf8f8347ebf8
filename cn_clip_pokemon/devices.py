"""Which device, distributed backend and process layout training uses: decided here and only here.

Read from the environment the way torchrun sets it (RANK, LOCAL_RANK, WORLD_SIZE), defaulting to
one process. CUDA with NCCL when a GPU is there, gloo for everything else. Upstream's training code
also calls torch.distributed everywhere (all_gather, all_reduce, get_world_size), so even a single
process gets a process group, of one, with an in-memory store: no port, no launcher.

The device asked for is an argument, never ambient state: ``train --device`` is an ordinary flag of
upstream's parser (patches/0027), which torchrun hands to every worker with the rest of the command
line; ``classify``, ``search``, ``evaluate`` and ``serve`` pass theirs to :func:`pick_device`. A device
name has one rule, :func:`check_device_name`: every command's ``--device`` is checked by it while
its arguments are parsed, before any weights load.
"""
import logging
import os
from dataclasses import dataclass

DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")  # what --device may name: cpu, cuda[:N], mps[:N], xpu[:N]
DEVICE_CHOICES = "cpu, cuda or cuda:N (or auto)"


def check_device_name(text):
    """The one rule for a device name (``--device`` of every command, ``device=`` of the Python API):
    auto, cpu, cuda, cuda:N (or mps/xpu where torch has them), lower-cased; None for auto or nothing.

    Raises ValueError for any other name (``tpu``, ``cpu:1``, ``cuda:x``), without asking torch, so a
    command refuses it while its arguments are parsed, before any weights load.
    """
    name = (text or "").strip().lower()
    if name in ("", "auto"):
        return None
    kind, colon, index = name.partition(":")
    if kind not in DEVICE_TYPES or (colon and not index.isdigit()) or (kind == "cpu" and colon):
        raise ValueError(f"unknown device {text!r}: use {DEVICE_CHOICES}")
    return name


def requested_device_type(requested, cuda_available):
    """The device for a request: ``auto`` is CUDA when there is a GPU, else the CPU.

    Raises ValueError for a name :func:`check_device_name` refuses (``tpu``) and RuntimeError for
    CUDA asked for without a GPU, each naming the way out.
    """
    name = check_device_name(requested)
    if name is None:
        return "cuda" if cuda_available else "cpu"
    if name.partition(":")[0] == "cuda" and not cuda_available:
        raise RuntimeError(
            f"--device {name} but torch sees no CUDA device (torch built without CUDA, or "
            "CUDA_VISIBLE_DEVICES hides the GPUs); use --device cpu"
        )
    return name


def pick_device(device=None):
    """A ``torch.device`` for inference: ``device`` as given (validated), or CUDA when there is one."""
    import torch

    from cn_clip_pokemon.errors import UserError

    if isinstance(device, torch.device):
        device = str(device)
    try:
        return torch.device(requested_device_type(device, torch.cuda.is_available()))
    except (ValueError, RuntimeError) as error:
        raise UserError(str(error)) from None


@dataclass(frozen=True)
class Layout:
    """Where one training process runs and who its peers are."""

    device: str  # "cpu", "cuda:1", ...
    backend: str  # "nccl" or "gloo"
    rank: int
    local_rank: int
    world_size: int

    @property
    def distributed(self):
        return self.world_size > 1


def decide_layout(environ=None, requested="auto", cuda_available=None, cuda_device_count=None, nccl_available=None):
    """The device, backend and ranks for this process (no side effects).

    ``requested`` is the ``--device`` flag; ranks come from torchrun's variables in ``environ``.
    CUDA uses NCCL where torch has it; a CUDA build without NCCL (Windows, upstream #279) uses gloo.
    """
    environ = os.environ if environ is None else environ
    if cuda_available is None or cuda_device_count is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        if cuda_device_count is None:
            cuda_device_count = torch.cuda.device_count() if cuda_available else 0
    if nccl_available is None:
        import torch.distributed as dist

        nccl_available = dist.is_available() and dist.is_nccl_available()
    world_size = int(environ.get("WORLD_SIZE", "1"))
    rank = int(environ.get("RANK", "0"))
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world_size}")

    device_type = requested_device_type(requested, cuda_available)
    if device_type.startswith("cuda"):
        if local_rank >= cuda_device_count:
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {cuda_device_count} CUDA device(s) are visible: "
                f"ask torchrun for at most {cuda_device_count} processes per node"
            )
        return Layout(f"cuda:{local_rank}", "nccl" if nccl_available else "gloo", rank, local_rank, world_size)
    return Layout(device_type, "gloo", rank, local_rank, world_size)


def init_distributed_device(args):
    """Decide the layout, select the device, start the process group; fill upstream's args fields.

    Sets ``args.device`` (torch.device), ``args.local_device_rank``, ``args.rank`` and
    ``args.world_size``, the fields upstream's training code reads. Returns the Layout.
    """
    import torch
    import torch.distributed as dist

    layout = decide_layout(requested=getattr(args, "device_request", "auto"))
    device = torch.device(layout.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if layout.distributed:
            # torchrun has set MASTER_ADDR/MASTER_PORT for the env:// rendezvous
            dist.init_process_group(backend=layout.backend, rank=layout.rank, world_size=layout.world_size)
        else:
            dist.init_process_group(backend=layout.backend, store=dist.HashStore(), rank=0, world_size=1)
    if layout.distributed and device.type == "cpu" and layout.rank == 0:
        logging.info("Training on the CPU with %d processes (gloo)", layout.world_size)
    args.device = device
    args.local_device_rank = layout.local_rank
    args.rank = dist.get_rank()
    args.world_size = dist.get_world_size()
    return layout


def cpu_has_fast_bf16():
    """Whether this CPU runs bf16 matrix maths natively (AVX-512 or AMX through oneDNN)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(device):
    """The autocast dtype of ``--precision amp`` on ``device``, or None for plain fp32.

    fp16 on CUDA, as upstream. bf16 elsewhere (fp32's range, so no loss scaling), except on a CPU
    without native bf16, where emulated bf16 steps were measured ~20x slower than fp32 (AVX2).
    """
    import torch

    device_type = getattr(device, "type", str(device).split(":")[0])
    if device_type == "cuda":
        return torch.float16
    if device_type == "cpu" and not cpu_has_fast_bf16():
        return None
    return torch.bfloat16


def autocast(device, enabled=True):
    """The autocast context of ``--precision amp`` (see amp_dtype); a no-op where amp means fp32."""
    import torch

    device_type = getattr(device, "type", str(device).split(":")[0])
    dtype = amp_dtype(device)
    return torch.autocast(device_type=device_type, dtype=dtype or torch.bfloat16, enabled=enabled and dtype is not None)


def grad_scaler(device, precision):
    """Loss scaling only where it is needed: fp16 autocast on CUDA. None for fp32/fp16 weights.

    For ``amp`` off CUDA this is a disabled scaler, which passes the loss and the optimizer step
    through unchanged, so upstream's ``scaler.scale(loss).backward(); scaler.step(opt)`` still runs.
    """
    import torch

    if precision != "amp":
        return None
    device_type = getattr(device, "type", str(device).split(":")[0])
    if amp_dtype(device) is None:
        logging.warning("--precision amp on a CPU without native bf16: training in fp32 (faster here)")
    return torch.amp.GradScaler(device_type, enabled=device_type == "cuda")
