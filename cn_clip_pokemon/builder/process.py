"""The work done to each picture of a build, in worker processes: open, composite on white (or frame
its subject on white), fit to a square, encode, hash; and the clocks that say where the CPU went when a build is profiled."""
import hashlib
import os
import time


# What a worker does to each picture, timed separately when the build is profiled.
WORKER_STAGES = ("open", "composite", "resize", "encode", "hash")


def process_picture(task):
    """Worker: open, composite on white, fit to a square, encode.

    ``task`` is ``(index, path, image_size, framing, profiled)`` (``framing``: dataset_format.FRAMINGS); returns ``(index, base64, digest, error,
    timing)``. The base64 text comes back as ASCII bytes: the parent only copies it into files and
    LMDB, and bytes go there without another encoding pass per write. ``timing`` is None unless
    ``profiled``: then ``(pid, CPU seconds of this process when the picture started and when it
    ended, CPU seconds of each of WORKER_STAGES)``.
    """
    from cn_clip_pokemon.images import PictureError, fit_square, framed_picture, png_bytes, png_text

    index, path, image_size, framing, profiled = task
    clock = time.process_time
    marks = [clock()] if profiled else None
    try:
        image = framed_picture(path, framing, marks=marks)  # adds the end of decoding, before compositing
        if profiled:
            marks.append(clock())
        square = fit_square(image, image_size)
        if profiled:
            marks.append(clock())
        png = png_bytes(square)
        encoded = png_text(png)
        if profiled:
            marks.append(clock())
        # Same pixels give the same PNG (same encoder, same settings) and different pixels a
        # different one, so the PNG identifies the picture; it is about a ninth of the pixels' size
        # to hash (15.8 KiB against 147 KiB for sprites at 224 px, mean of 960).
        digest = hashlib.sha1(png).digest()
        timing = None
        if profiled:
            marks.append(clock())
            timing = (os.getpid(), marks[0], marks[-1], *(end - start for start, end in zip(marks, marks[1:])))
        return index, encoded, digest, None, timing
    except PictureError as error:
        reason = str(error)
        prefix = f"{path}: "
        return index, None, None, reason[len(prefix):] if reason.startswith(prefix) else reason, None
    except Exception as error:  # one bad file must never stop the build; it is reported instead
        return index, None, None, f"cannot be opened ({type(error).__name__}: {error})", None


class StageClock:
    """Lap timer of this thread's CPU (``time.thread_time``): ``lap(stage)`` charges the CPU used
    since the previous lap to ``stage``. Used when a build is profiled (``profile=``)."""

    def __init__(self):
        self.seconds = {}
        self.last = time.thread_time()

    def lap(self, stage):
        now = time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now


class NoClock:
    """What the builder uses when nobody asked for a profile: laps cost one call."""

    seconds = {}

    def lap(self, stage):
        pass


class WorkerCpu:
    """Sums the workers' CPU from the timings they send back: per stage, and the rest (receiving
    tasks, pickling and sending results: the transfer's worker side), and their start-up."""

    def __init__(self):
        self.stages = dict.fromkeys(WORKER_STAGES, 0.0)
        self.first, self.last = {}, {}

    def add(self, timing):
        pid, started, ended, *stage_seconds = timing
        for stage, seconds in zip(WORKER_STAGES, stage_seconds):
            self.stages[stage] += seconds
        self.first[pid] = min(self.first.get(pid, started), started)
        self.last[pid] = max(self.last.get(pid, ended), ended)

    def summary(self):
        busy = sum(self.last[pid] - self.first[pid] for pid in self.first)
        return {
            "processes": len(self.first),
            "stages": self.stages,
            "transfer": max(0.0, busy - sum(self.stages.values())),
            "startup": sum(self.first.values()),
        }
