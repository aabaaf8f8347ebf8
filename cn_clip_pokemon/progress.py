"""Progress bars for long work, drawn only where someone watches: when stderr is a terminal.

Every command that shows progress (fetch-sprites, build-dataset, classify, search, evaluate, serve)
asks :func:`progress_bar`, so a log file or a pipe never fills with carriage-return redraws, and a
terminal always gets its bar (unless the command was told ``--no-progress``).
"""
import sys


def shows_progress(enabled=True, stream=None):
    """Whether a bar would be drawn: ``enabled`` and ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    if not enabled or stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, total=None, description=None, unit="it", enabled=True, leave=True):
    """A tqdm bar on stderr, disabled unless :func:`shows_progress`; use it like ``tqdm`` itself
    (iterate over it, or ``update()`` it; it is also a context manager)."""
    from tqdm import tqdm

    return tqdm(
        iterable, total=total, desc=description, unit=unit, leave=leave, file=sys.stderr,
        disable=not shows_progress(enabled),
    )
