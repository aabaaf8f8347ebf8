"""The demo's stages: each a separate `python -m cn_clip_pokemon ...` process, printed first as a
user would type it, and what the demo does between them (which pictures it reuses, the model before
training, the question it asks, the sample it shows, the links of the seen views)."""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cn_clip_pokemon.demo_recipes import recipe_flag
from cn_clip_pokemon.errors import UserError


# The seed's own example: candidate names on a Pikachu picture.
SEED_CANDIDATES = ["杰尼龟", "妙蛙种子", "小火龙", "皮卡丘"]
PIKACHU = 25


# WORKDIR/pictures-seen-views: links to the pictures of the animations trained on
SEEN_VIEWS = "pictures-seen-views"


def _command_line(argv):
    return "cn-clip-pokemon " + " ".join(shlex.quote(str(a)) for a in argv)


def run_stage(title, argv, capture_json=False, environment=None):
    """Run one stage as its own process, printed first as a user would type it (with ``environment``,
    variables set for that process only)."""
    environment = environment or {}
    shown = "".join(f"{key}={shlex.quote(value)} " for key, value in environment.items()) + _command_line(argv)
    print(f"\n== {title}\n$ {shown}", flush=True)
    started = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "cn_clip_pokemon", *map(str, argv)],
        stdout=subprocess.PIPE if capture_json else None,
        text=True,
        env={**os.environ, **environment} if environment else None,
    )
    if completed.returncode != 0:
        raise UserError(f"stage '{title}' failed (exit {completed.returncode}); rerun `{shown}` to see why")
    elapsed = time.time() - started
    result = json.loads(completed.stdout) if capture_json else None
    return result, elapsed


def reuse(title, what):
    print(f"\n== {title}\n(reusing {what}; --fresh starts over)", flush=True)


def same_pictures(pictures, numbers, frames):
    """Whether fetch-sprites already laid out these Pokemon with this many frames."""
    from cn_clip_pokemon.sprites import MARKER, MARKER_LIMIT, parse_numbers

    from cn_clip_pokemon.safe_reading import load_json_file

    marker = pictures / MARKER
    if not marker.exists():
        return False
    try:
        made = load_json_file(marker, MARKER_LIMIT, MARKER, "")
    except UserError:
        return False  # fetch-sprites says what is wrong with it
    if not isinstance(made, dict):
        return False
    wanted = list(parse_numbers(numbers))
    made_numbers = made.get("numbers") or []
    if len(made_numbers) == 2 and wanted == list(range(wanted[0], wanted[-1] + 1)):
        wanted = [wanted[0], wanted[-1]]
    return made.get("frames_per_animation") == frames and made_numbers == wanted


def save_initial_model(recipe, path, pretrained=None, seed=123):
    """The model as training starts it (random initialisation, or the official weights), saved so
    `classify` can show what it says before any training."""
    import torch

    from cn_clip_pokemon.checkpoint import load_model, model_config_for, save_model

    vision_model, text_model = recipe_flag(recipe, "--vision-model"), recipe_flag(recipe, "--text-model")
    config = model_config_for(vision_model, text_model)
    if pretrained is not None:
        model, _ = load_model(str(pretrained), device="cpu", vision_model=vision_model, text_model=text_model)
    else:
        from cn_clip.clip.model import CLIP

        torch.manual_seed(seed)  # upstream's main seeds nothing before building; fix ours for a stable report
        model = CLIP(**config["model_info"])
    save_model(model.float(), path, config, name=Path(path).stem, framing=recipe["framing"])


def pick_question(info, pictures):
    """The seed's question, ``{"number", "name", "picture", "candidates"}``: Pikachu among the seed's
    four names when the run has Pikachu; else the first Pokemon of the run among its name and three
    others of the run. The picture is one of its unseen views (a front view first), else any of it.
    ``info``: the views dataset's dataset_info.json."""
    images = list(info["images"].values())
    numbers = sorted({entry["number"] for entry in images})
    if not numbers:
        return None
    number = PIKACHU if PIKACHU in numbers else numbers[0]
    ours = sorted(
        (entry for entry in images if entry["number"] == number),
        key=lambda entry: (entry["split"] != "test", not _is_front(entry), entry["source"]),
    )
    name = ours[0]["name"]
    if number == PIKACHU:
        candidates = list(SEED_CANDIDATES)
    else:
        names_of = {entry["number"]: entry["name"] for entry in images}
        candidates = [name] + [names_of[other] for other in numbers if other != number][:3]
    return {"number": number, "name": name, "picture": str(pictures / ours[0]["source"]), "candidates": candidates}


def _is_front(entry):
    return entry["view"].rsplit("/", 1)[-1].startswith("front")


def unseen_view_sample(info, pictures, count=24):
    """A spread of unseen-view pictures (of the views dataset's ``info``), one per Pokemon (a front
    view where there is one), for the grid."""
    first_per_pokemon = {}
    for entry in sorted(info["images"].values(), key=lambda e: (e["number"], not _is_front(e), e["source"])):
        if entry["split"] == "test":
            first_per_pokemon.setdefault(entry["number"], entry)
    chosen = list(first_per_pokemon.values())
    step = max(1, len(chosen) // count)
    return [pictures / entry["source"] for entry in chosen[::step][:count]]


def link_seen_views(info, pictures, seen, ledger):
    """``seen``: a folder of symlinks to the pictures of the views dataset's train split (the
    animations that are trained on; ``info`` its dataset_info.json), laid out as in ``pictures``, for
    `build-dataset --split-by view` to deal frames of. The links of an earlier run (those ``ledger``
    says the demo wrote) go first; anything else there is refused, as the dataset would be built from it."""
    from cn_clip_pokemon.owned_files import remove_listed

    kept = remove_listed(seen, ledger.owned(under=SEEN_VIEWS))
    if kept:
        raise UserError(f"{seen} holds {kept[0]}, which the demo did not write, and the dataset of seen views is "
                        f"built from that folder: move it out of {seen} and run again")
    count = 0
    for entry in info["images"].values():
        if entry["split"] != "train":
            continue
        link = seen / entry["source"]
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.realpath(pictures / entry["source"]), link)
        count += 1
    return count


def ask_the_question(question, checkpoint, when):
    """`classify` the question's picture among its candidate names -> ({name: probability}, the stage's
    seconds: a process start, the model loaded, one picture; the demo's budget counts the stages after
    training in these); (None, None) without a question."""
    if question is None:
        return None, None
    candidates = question["candidates"]
    result, seconds = run_stage(
        f"{when}: {question['name']} among {len(candidates)} names",
        ["classify", question["picture"], "--checkpoint", checkpoint, "--names", *candidates, "--top-k", len(candidates), "--json"],
        capture_json=True,
    )
    (item,) = result["results"]
    return {entry["name"]: round(float(entry["probability"]), 4) for entry in item["predictions"]}, seconds
