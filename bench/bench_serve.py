"""One picture through the web page's HTTP API against the same Classifier called in-process.

    python bench/bench_serve.py                    # ViT-B-16 + RoBERTa-wwm-ext-base-chinese, CPU
    python bench/bench_serve.py --vision-model ViT-T-8-64 --text-model RBT-Tiny-chinese   # quick

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


def median_and_spread(values):
    return statistics.median(values), min(values), max(values)


def classify_over_http(client, url, picture):
    """Upload, queue, read the answer: the seconds of each stage and the top name."""
    stages = {}
    started = time.perf_counter()
    with open(picture, "rb") as file:
        response = client.post(f"{url}gradio_api/upload", files={"files": (picture.name, file, "image/png")})
    response.raise_for_status()
    server_path = response.json()[0]
    stages["upload"] = time.perf_counter() - started

    started = time.perf_counter()
    payload = {"data": [{"path": server_path, "orig_name": picture.name, "meta": {"_type": "gradio.FileData"}}]}
    response = client.post(f"{url}gradio_api/call/classify", json=payload)
    response.raise_for_status()
    event_id = response.json()["event_id"]
    stages["queue"] = time.perf_counter() - started

    started = time.perf_counter()
    event, data = None, None
    with client.stream("GET", f"{url}gradio_api/call/classify/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = line.split(":", 1)[1].strip()
                break
    stages["answer"] = time.perf_counter() - started
    if event != "complete":
        raise SystemExit(f"the page answered {event}: {data}")
    label = json.loads(data)[0]
    return stages, label["label"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vision-model", default="ViT-B-16")
    parser.add_argument("--text-model", default="RoBERTa-wwm-ext-base-chinese")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=10, help="pictures each way, alternating (after one warm-up each)")
    args = parser.parse_args(argv)

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
