"""Worker processes for CPU-bound work (build-dataset's pictures, fetch-sprites' animations), in one place."""
import multiprocessing


def _pool_context():
    # forkserver: workers do not inherit the parent's threads (torch, tqdm), which fork would copy.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else None)


def start_workers_early(modules=()):
    """Start the process the workers are forked from now, with ``modules`` imported in it once: it boots
    while this process does other work (build-dataset scans the folder meanwhile), and each worker
    starts with them loaded instead of importing them itself. Nothing to do where workers are not
    forked from a server (no forkserver on this system) or the server already runs (the preload
    then does not change)."""
    context = _pool_context()
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    context.set_forkserver_preload(["__main__", *modules])  # "__main__": what the server loads by default
    forkserver.ensure_running()


QUEUED = 4  # chunks a worker may hold at once: it never waits for its next one


def run_in_pool(function, tasks, workers, window=None, chunksize=8):
    """Yield ``function(task)`` for each task, in order, from ``workers`` processes.

    At most ``window`` tasks are in flight or waiting to be yielded in order, which keeps memory flat
    however many there are: the task reader cannot run ahead of the workers, nor the workers ahead of the consumer.

    Each worker has its own pipe; this thread sends it chunks of tasks, receives each chunk's results
    in one message when the chunk is done and puts them back in order (one message a chunk, not one a
    task: the parent wakes, polls and unpickles once for ``chunksize`` results, on two cores the CPU it
    takes is the workers'). No helper thread: multiprocessing.Pool's worker-handler
    thread also waits on the result pipe, so it wakes and spins for as long as a result sits there
    unread, and with its task and result threads it contends for the GIL with the thread that writes
    the dataset. On a busy or hyperthreaded machine that cost up to a tenth of the build's CPU.
    An exception raised by ``function`` is raised here; a worker that dies is an error.
    """
    if workers <= 1:
        yield from map(function, tasks)
        return
    from multiprocessing.connection import wait

    # Each worker has up to QUEUED chunks in flight; the window (tasks sent and not yet yielded) is twice
    # what they hold together, so the results one worker finishes ahead of a slower one's can wait in
    # order without that worker running dry: with the window equal to what the workers hold, the worker
    # holding the oldest tasks was refilled first every time and the other one stood idle a chunk's
    # time (15-25 ms in a 224 px build) now and then.
    window = max(window or 2 * workers * chunksize * QUEUED, workers * chunksize)
    per_worker = max(chunksize, min(chunksize * QUEUED, window // workers))
    context = _pool_context()
    connections, processes = [], []
    try:
        for _ in range(workers):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(target=_pool_worker, args=(function, theirs), daemon=True)
            process.start()
            theirs.close()
            connections.append(ours)
            processes.append(process)
        in_flight = {connection: 0 for connection in connections}  # tasks sent and not back yet
        tasks = enumerate(tasks)
        done = {}  # position -> result, received out of order
        sent = received = 0
        exhausted = False

        def feed():
            """Send chunks while there is room, one a worker in turn, the emptiest first (a small
            build's pictures are shared out evenly, not all queued at the first worker)."""
            nonlocal sent, exhausted
            while not exhausted and sent - received < window:
                connection = min(connections, key=in_flight.get)
                if in_flight[connection] >= per_worker:
                    return
                chunk = []
                for position, task in tasks:
                    chunk.append((position, task))
                    if len(chunk) == chunksize:
                        break
                if len(chunk) < chunksize:
                    exhausted = True
                if chunk:
                    try:
                        connection.send(chunk)
                    except OSError:
                        _worker_died(processes)
                    in_flight[connection] += len(chunk)
                    sent += len(chunk)

        feed()
        while received < sent:
            for connection in wait([connection for connection in connections if in_flight[connection]]):
                try:
                    results = connection.recv()
                except (EOFError, OSError):
                    _worker_died(processes)
                for position, failed, result in results:
                    if failed:
                        raise result
                    in_flight[connection] -= 1
                    done[position] = result
            while received in done:
                yield done.pop(received)
                received += 1
            feed()
    finally:
        for connection in connections:
            try:
                connection.send(None)  # stop
            except OSError:
                pass
        for process in processes:
            process.join(timeout=1)
            if process.exitcode is None:
                process.terminate()
                process.join()
        for connection in connections:
            connection.close()


def _worker_died(processes):
    for process in processes:
        process.join(timeout=0.5)  # let the dead one's exit code be known
    codes = [process.exitcode for process in processes]
    raise RuntimeError(f"a worker process died (exit codes {codes})") from None


def _pool_worker(function, connection):
    """A worker of run_in_pool: chunks of (position, task) in, one list of (position, failed, result) out per chunk."""
    _ignore_interrupts()
    while True:
        try:
            chunk = connection.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if chunk is None:
            return
        results = []
        for position, task in chunk:
            try:
                results.append((position, False, function(task)))
            except Exception as error:
                results.append((position, True, error))
        try:
            connection.send(results)
        except OSError:  # the parent is gone
            return
        except Exception:  # a result or an exception that does not pickle (send pickles before it writes)
            try:
                connection.send([_picklable(message) for message in results])
            except OSError:
                return


def _picklable(message):
    """``message`` as it is when it pickles, else its position with the pickling error."""
    import pickle

    position = message[0]
    try:
        pickle.dumps(message)
        return message
    except Exception as error:
        return position, True, RuntimeError(f"{type(error).__name__}: {error}")


def _ignore_interrupts():
    # Ctrl-C goes to the whole process group: let the parent stop the pool and clean up.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
