"""The web page: one picture through its HTTP API against the same Classifier called in-process;
with --startup, how soon `serve` answers on a large split, and how soon it searches.

    python bench/bench_serve.py                    # ViT-B-16 + RoBERTa-wwm-ext-base-chinese, CPU
    python bench/bench_serve.py --vision-model ViT-T-8-64 --text-model RBT-Tiny-chinese   # quick
    python bench/bench_serve.py --startup DATASET --vision-model ViT-T-8-64 --text-model RBT-Tiny-chinese

--startup DATASET (a built dataset, e.g. the demo's unseen views: `fetch-sprites --frames 24`, then
`build-dataset --split-by animation --valid-fraction 0 --test-fraction 0.25 --image-size 64`, whose
test split has 13,327 pictures) starts `cn-clip-pokemon serve` twice as a user would, over a
checkpoint of random weights that records the dataset's names as its captions: first with an empty
embedding cache, then again (a restart, the cache kept). For each it measures the seconds from
starting the process to the port answering, to a classify answered through the page's API while
the split is being encoded, and to the first search answered; and it records the progress the
page's search reported meanwhile.

Random weights (speed does not depend on them), all 1025 names, one model loaded once, measured
side by side in one run, rounds alternating between the two ways:
- in-process: ``Classifier.classify_paths([picture])`` with the name embeddings warm (what
  `classify` does per picture);
- page: `cn-clip-pokemon serve`'s page on 127.0.0.1, called as a browser's script would through
  Gradio's HTTP API: upload the file (``/gradio_api/upload``), queue the event
  (``/gradio_api/call/classify``), read the result stream. The server runs in this process so the
  time spent inside the page's handler is measured too; the rest is Gradio and HTTP.
Target: page <= 1.5x in-process per picture.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

TARGET = 1.5
SEARCHED = "皮卡丘"


def median_and_spread(values):
    return statistics.median(values), min(values), max(values)


def classify_over_http(client, url, picture):
    """Upload, queue, read the answer: the seconds of each stage and the top name."""
    stages = {}
    started = time.perf_counter()
    uploaded = upload_over_http(client, url, picture)
    stages["upload"] = time.perf_counter() - started
    label = call_over_http(client, url, "classify", [uploaded], stages=stages)[0]
    return stages, label["label"]


def call_over_http(client, url, api_name, data, stages=None):
    """One event through Gradio's HTTP API: its output list (or SystemExit with the page's error).
    ``stages``, when given, gets the seconds spent queueing the event and waiting for its answer."""
    stages = {} if stages is None else stages
    started = time.perf_counter()
    response = client.post(f"{url}gradio_api/call/{api_name}", json={"data": data})
    response.raise_for_status()
    event_id = response.json()["event_id"]
    stages["queue"] = time.perf_counter() - started
    started = time.perf_counter()
    event = None
    with client.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                stages["answer"] = time.perf_counter() - started
                if event == "error":
                    raise SystemExit(f"the page answered an error to {api_name}: {line}")
                return json.loads(line.split(":", 1)[1].strip())
    raise SystemExit(f"the page's {api_name} stream ended without an answer")


def upload_over_http(client, url, picture):
    with open(picture, "rb") as file:
        response = client.post(f"{url}gradio_api/upload", files={"files": (picture.name, file, "image/png")})
    response.raise_for_status()
    return {"path": response.json()[0], "orig_name": picture.name, "meta": {"_type": "gradio.FileData"}}


def free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_start(checkpoint, dataset, picture, log):
    """Start `serve`, measure, stop it: seconds to the port, to a classify, to a search; progress seen."""
    import os
    import signal
    import subprocess

    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "cn_clip_pokemon", "serve", "--checkpoint", str(checkpoint), "--dataset", str(dataset),
               "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    seconds, progress = {}, []
    started = time.perf_counter()
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=dict(os.environ, NO_PROXY="127.0.0.1"))
    try:
        with httpx.Client(timeout=600, trust_env=False) as client:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"serve exited with {server.returncode}: see {log}")
                try:
                    if client.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            seconds["port answers"] = time.perf_counter() - started
            call_over_http(client, url, "classify", [upload_over_http(client, url, picture)])
            seconds["first classify answered"] = time.perf_counter() - started
            while True:
                gallery, message = call_over_http(client, url, "search", [SEARCHED])
                if gallery:
                    break
                progress.append(message)
                time.sleep(0.5)
            seconds["first search answered"] = time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return seconds, progress


def startup(args):
    import torch
    from bench_classify import make_picture
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon.checkpoint import model_config_for, save_model
    from cn_clip_pokemon.dataset_format import EVAL_SPLIT
    from cn_clip_pokemon.dataset_split import SplitPictures

    dataset = Path(args.startup)
    with SplitPictures(dataset, EVAL_SPLIT) as pictures:
        count = len(pictures.image_ids)
        names = (pictures.info or {}).get("names") or sorted({pictures.label(image_id) for image_id in pictures.image_ids})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {dataset}: test split of {count:,} pictures, "
          f"{len(names)} names; model {args.vision_model}@{args.text_model} (random weights)")
    with tempfile.TemporaryDirectory(prefix="bench-serve-startup-") as folder:
        folder = Path(folder)
        config = model_config_for(args.vision_model, args.text_model)
        torch.manual_seed(0)
        checkpoint = save_model(CLIP(**config["model_info"]), folder / "epoch_latest.pt", config, captions=names)
        picture = folder / "picture.png"
        make_picture(0).save(picture)
        runs = {}
        for run in ("first start, empty cache", "restart, cache kept"):
            runs[run] = one_start(checkpoint, dataset, picture, folder / f"serve-{len(runs)}.log")
            print(f"  {run}: done", flush=True)
    print(f"\nseconds from starting `serve` (one run each; {count:,} pictures to search):")
    stages = list(next(iter(runs.values()))[0])
    print(f"  {'':28}" + "".join(f"{stage:>26}" for stage in stages))
    for run, (seconds, _) in runs.items():
        print(f"  {run:28}" + "".join(f"{seconds[stage]:26.1f}" for stage in stages))
    for run, (_, progress) in runs.items():
        shown = f"{progress[0]!r} ... {progress[-1]!r}" if progress else "none (searched at once)"
        print(f"  search before it was ready, {run}: {len(progress)} answers, {shown}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vision-model", default="ViT-B-16")
    parser.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10, help="pictures each way, alternating (after one warm-up each)")
    parser.add_argument("--startup", metavar="DATASET", help="measure how soon `serve` answers and searches on DATASET's test split instead")
    args = parser.parse_args(argv)
    if args.startup:
        return startup(args)

    import httpx
    import torch
    from bench_classify import make_picture
    from cn_clip.clip.model import CLIP

    from cn_clip_pokemon.checkpoint import model_config_for, save_model
    from cn_clip_pokemon.serve import PokedexService, build_page, launch_page

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        folder = Path(folder)
        config = model_config_for(args.vision_model, args.text_model)
        torch.manual_seed(0)
        checkpoint = save_model(CLIP(**config["model_info"]), folder / "epoch_latest.pt", config)
        picture = folder / "picture.png"
        make_picture(0).save(picture)

        started = time.perf_counter()
        service = PokedexService(checkpoint, device=args.device, progress=False)
        print(f"model {args.vision_model}@{args.text_model} (random weights), {len(service.classifier.names)} names; "
              f"loaded and names encoded in {time.perf_counter() - started:.1f} s (once, not in the ratio)")

        handler_seconds = []
        classify_upload = service.classify_upload

        def timed_handler(upload):
            started = time.perf_counter()
            try:
                return classify_upload(upload)
            finally:
                handler_seconds.append(time.perf_counter() - started)

        service.classify_upload = timed_handler  # the page calls it through the instance
        page = build_page(service)
        url = launch_page(page, host="127.0.0.1")
        try:
            with httpx.Client(timeout=300, trust_env=False) as client:  # 127.0.0.1 only, never a proxy
                def in_process():
                    started = time.perf_counter()
                    [result] = service.classifier.classify_paths([picture], top_k=5, batch_size=1)
                    return time.perf_counter() - started, result["predictions"][0]["name"]

                in_process()  # warm-up both ways (first forward pass, first HTTP connection)
                classify_over_http(client, url, picture)
                handler_seconds.clear()
                local_times, page_times, stage_times = [], [], {"upload": [], "queue": [], "answer": []}
                for _ in range(args.rounds):
                    seconds, local_top = in_process()
                    local_times.append(seconds)
                    stages, page_top = classify_over_http(client, url, picture)
                    page_times.append(sum(stages.values()))
                    for stage, value in stages.items():
                        stage_times[stage].append(value)
                    assert page_top.startswith(local_top), (page_top, local_top)
        finally:
            page.close()
            service.close()

    def show(label, values):
        median, low, high = median_and_spread(values)
        print(f"  {label:37} {median * 1000:8.1f} ms  ({low * 1000:.1f}-{high * 1000:.1f})")

    print(f"\nper picture, median of {args.rounds} (min-max):")
    show("in-process Classifier", local_times)
    show("page over HTTP, in all", page_times)
    show("  upload the file", stage_times["upload"])
    show("  queue the event", stage_times["queue"])
    show("  wait for the answer", stage_times["answer"])
    show("    of which the page's handler", handler_seconds)
    overhead = [total - handler for total, handler in zip(page_times, handler_seconds)]
    show("  Gradio + HTTP (all but the handler)", overhead)
    ratios = [page / local for page, local in zip(page_times, local_times)]
    ratio = statistics.median(page_times) / statistics.median(local_times)
    print(f"\npage vs in-process: {ratio:.2f}x (per round {min(ratios):.2f}-{max(ratios):.2f}x; "
          f"target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})")
    print(f"same top name both ways: {page_top.startswith(local_top)} ({local_top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
