"""workers.run_in_pool: the worker processes behind build-dataset and fetch-sprites."""
import os

import pytest

from cn_clip_pokemon.workers import run_in_pool


def square(number):
    return number * number


def fail_on_seven(number):
    if number == 7:
        raise ValueError("seven")
    return number


def die_on_five(number):
    if number == 5:
        os._exit(3)
    return number


@pytest.mark.parametrize("workers, chunksize", [(1, 8), (2, 1), (2, 3), (3, 8)])
def test_results_come_in_task_order(workers, chunksize):
    assert list(run_in_pool(square, iter(range(203)), workers, chunksize=chunksize)) == [n * n for n in range(203)]


def pid_of(number):
    return os.getpid()


def test_a_small_job_is_shared_out_chunk_by_chunk_not_queued_at_the_first_worker():
    pids = list(run_in_pool(pid_of, iter(range(32)), 2, chunksize=4))
    chunks = [set(pids[start:start + 4]) for start in range(0, 32, 4)]
    assert all(len(chunk) == 1 for chunk in chunks)  # a chunk runs in one worker
    owners = [chunk.pop() for chunk in chunks]
    assert len(set(owners)) == 2 and all(owners[k] != owners[k + 1] for k in range(7))  # in turn


def test_the_task_reader_never_runs_far_ahead_of_the_consumer():
    pulled = []

    def tasks():
        for number in range(500):
            pulled.append(number)
            yield number

    results = run_in_pool(square, tasks(), 2, window=16, chunksize=4)
    assert next(results) == 0
    assert len(pulled) <= 16 + 4  # the window, and one chunk being read
    assert list(results) == [n * n for n in range(1, 500)]


def test_an_exception_in_a_task_reaches_the_consumer():
    with pytest.raises(ValueError, match="seven"):
        list(run_in_pool(fail_on_seven, iter(range(20)), 2, chunksize=2))


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="worker process died"):
        list(run_in_pool(die_on_five, iter(range(20)), 2, chunksize=2))


def unpicklable_on_three(number):
    return (lambda: number) if number == 3 else number


def test_a_result_that_does_not_pickle_is_an_error_that_names_it_not_a_hang():
    with pytest.raises(RuntimeError, match="(?i)pickle.*lambda"):
        list(run_in_pool(unpicklable_on_three, iter(range(8)), 2, chunksize=4))
