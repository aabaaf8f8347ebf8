"""Training's --max-minutes (patches/0032): a wall-clock limit after which upstream's loop stops as
if its steps were done, so validation and the checkpoints follow as at the end of a run; until then the
learning-rate schedule follows the clock whenever the clock is further along than the steps, so a run the
limit ends has finished its schedule (warm-up, cosine down to zero) by then. The demo uses the limit as
the hard edge of its time budget: the step count it plans from its probe is an estimate, the limit is
not."""
import time


def start_clock(args):
    """Called first thing in upstream's main: the moment --max-minutes counts from (None: no limit)."""
    minutes = getattr(args, "max_minutes", None)
    if minutes is not None and minutes <= 0:
        raise SystemExit(f"--max-minutes {minutes:g}: give a number of minutes above 0, or leave the flag out for no limit")
    args.stop_at = time.time() + 60 * minutes if minutes else None


def elapsed_share(args):
    """The share of --max-minutes passed (1 or more: the limit has passed), None without a limit. With
    several processes it is rank 0's (every one must stop at the same step, or the next all-reduce waits
    forever, and use the same learning rate, or their weights drift apart)."""
    stop_at = getattr(args, "stop_at", None)
    if stop_at is None:
        return None
    share = 1 - (stop_at - time.time()) / (60 * args.max_minutes)
    if getattr(args, "world_size", 1) > 1:
        import torch
        import torch.distributed as dist

        value = torch.tensor([share], dtype=torch.float64, device=args.device)
        dist.broadcast(value, 0)
        share = float(value.item())
    return share


def time_is_up(args):
    """Whether the limit has passed (rank 0 decides)."""
    share = elapsed_share(args)
    return share is not None and share >= 1


def follow_the_clock(args, step):
    """``(schedule_step, up)`` for training step ``step`` of ``args.max_steps``: the step to set the
    learning-rate schedule for (``step``, or the share of the limit passed times the planned steps when
    that is further along; never the last planned step or beyond) and whether the limit has passed."""
    share = elapsed_share(args)
    if share is None:
        return step, False
    clock_step = min(int(share * args.max_steps), args.max_steps - 1)
    return max(step, clock_step), share >= 1
