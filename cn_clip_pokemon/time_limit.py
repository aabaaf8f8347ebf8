"""Training's --max-minutes (patches/0032): a wall-clock limit after which upstream's loop stops as if
its steps were done, so validation and the checkpoints follow as at the end of a run. The demo uses it
as the hard edge of its time budget: the step count it plans from its probe is an estimate, the limit
is not."""
import time


def start_clock(args):
    """Called first thing in upstream's main: the moment --max-minutes counts from (None: no limit)."""
    minutes = getattr(args, "max_minutes", None)
    if minutes is not None and minutes <= 0:
        raise SystemExit(f"--max-minutes {minutes:g}: give a number of minutes above 0, or leave the flag out for no limit")
    args.stop_at = time.time() + 60 * minutes if minutes else None


def time_is_up(args):
    """Whether the limit has passed, decided by rank 0 when several processes train (every one must
    stop at the same step, or the next all-reduce waits forever)."""
    stop_at = getattr(args, "stop_at", None)
    if stop_at is None:
        return False
    up = time.time() >= stop_at
    if getattr(args, "world_size", 1) > 1:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if up else 0], device=args.device)
        dist.broadcast(flag, 0)
        up = bool(flag.item())
    return up
