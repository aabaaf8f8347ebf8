"""``cn-clip-pokemon export-hf CHECKPOINT OUT``: a checkpoint as a Hugging Face transformers folder.

It writes a folder that ``ChineseCLIPModel.from_pretrained(OUT)`` and
``ChineseCLIPProcessor.from_pretrained(OUT)`` load offline: ``config.json``, ``model.safetensors``
(fp32), upstream's vocabulary as a BERT tokenizer, an image processor that treats a square picture
as upstream's ``image_transform`` does (bicubic resize to the input resolution, no crop, the same
mean and std), a model card (``README.md``) and the checkpoint's candidate captions
(``captions.json``). It is written in a temporary folder beside OUT and renamed into place
(files.staged_folder); an OUT that is not empty is replaced only when it is an export of ours (the
marker file lists every entry it may hold). The format itself (names, configs, the files) is
:mod:`cn_clip_pokemon.hf_format`.
"""
import json
import math
import os
import time
from collections import OrderedDict
from pathlib import Path

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, SPLITS
from cn_clip_pokemon.errors import UserError, install_hint
from cn_clip_pokemon.hf_format import (
    CAPTIONS_FILE,
    NotExpressible,
    hf_architecture,
    require_transformers,
    write_hf_files,
)

CARD_FILE = "README.md"
MARKER = ".cn-clip-pokemon-export.json"  # what export-hf wrote here: the entries it may replace
MARKER_FORMAT = 2  # 2: "files" is an owned_files.listing (kinds); 1 listed top-level names


# --------------------------------------------------------------------------- the output folder


MARKER_LIMIT = 16 << 20  # the most read of an earlier export's marker


def written_listing(out):
    """What an earlier export-hf wrote in ``out`` (a :func:`owned_files.listing`, the marker included), from
    its marker; ``{}`` without a readable one. A marker of an older export-hf lists top-level names:
    export-hf writes only files there."""
    from cn_clip_pokemon.owned_files import FILE, holds_marker
    from cn_clip_pokemon.safe_reading import load_json_file

    if not holds_marker(out, MARKER, b"{"):
        return {}
    try:
        made = load_json_file(Path(out) / MARKER, MARKER_LIMIT, f"export-hf's {MARKER}", "")
    except UserError:
        return {}
    written = made.get("files") if isinstance(made, dict) else None
    if isinstance(written, list) and all(isinstance(name, str) for name in written):
        written = {name: FILE for name in written}
    if not isinstance(written, dict) or not all(isinstance(kind, str) for kind in written.values()):
        return {}
    return {**written, MARKER: FILE}


def check_out_folder(out):
    """A one-line UserError unless ``out`` may be written: new, an empty folder, or an earlier export."""
    from cn_clip_pokemon.owned_files import first_foreign

    out = Path(out)
    if not os.path.lexists(out):
        return out
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{out} exists and is not a folder: choose a new folder for the export")
    foreign = first_foreign(out, written_listing(out))
    if foreign:
        raise UserError(
            f"{out} is not empty and is not an earlier export-hf folder (it holds {foreign}, which export-hf did not "
            "write): choose a new or empty folder; nothing was written"
        )
    return out


def clean_export_leftovers(out):
    """Remove what killed export-hf runs left beside ``out`` (owned_files.clean_leftovers): a temporary folder
    holding only files (all export-hf writes), a previous export holding only what its marker lists."""
    from cn_clip_pokemon.owned_files import FILE, clean_leftovers, first_foreign, holds_marker, listing

    return clean_leftovers(
        out, "export-hf",
        owns_old=lambda inside: first_foreign(inside, written_listing(inside)) is None,
        owns_temporary=lambda temp: all(kind == FILE for kind in listing(temp).values()),
        complete=lambda inside: holds_marker(inside, MARKER, b"{"),
    )


# --------------------------------------------------------------------------- the model card


def _count(tower_prefixes, state_dict):
    return sum(value.numel() for key, value in state_dict.items() if key.startswith(tower_prefixes))


def training_dataset(checkpoint_path):
    """What the run that wrote a checkpoint trained on, from upstream's ``params_*.txt`` beside
    ``checkpoints/`` (``{"train_data", "dataset"}``), or None when there is no such record."""
    checkpoints = Path(checkpoint_path).resolve().parent
    try:
        params = sorted(checkpoints.parent.glob("params_*.txt"))
    except OSError:
        return None
    if checkpoints.name != "checkpoints" or not params:
        return None
    found = {}
    try:
        for line in params[-1].read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(": ")
            if name in ("train_data", "dataset", "name", "max_epochs", "batch_size", "lr") and value not in ("", "None"):
                found[name] = value
    except (OSError, UnicodeDecodeError):
        return None
    return found or None


def _dataset_description(train_data):
    """A line about a built dataset (its info file) for an LMDB path, or ''."""
    from cn_clip_pokemon.dataset_format import info_path_of_split, read_dataset_info

    info_path = info_path_of_split(train_data)
    try:  # bounded in size and depth, as dataset_format.training_captions reads it
        info = read_dataset_info(info_path, "") if info_path.is_file() else {}
    except (OSError, UserError):
        return ""
    if not isinstance(info, dict):
        return ""
    names = info.get("names") or []
    parts = [f"{len(names)} names"] if names else []
    if info.get("image_size"):
        parts.append(f"{info['image_size']} px pictures")
    if info.get("templates"):
        parts.append("templates " + ", ".join(f"`{t}`" for t in info["templates"]))
    return f" ({'; '.join(parts)}; built by `cn-clip-pokemon build-dataset`)" if parts else ""


def model_card(title, loaded, source, state_dict, captions, trained_on, evaluation, context_length):
    """The README.md of an export: architecture, training data, evaluation, captions, use."""
    info = loaded.model_config["model_info"]
    config = loaded.model_config
    logit_scale = float(loaded.model.logit_scale.detach())
    vision_params = _count(("visual.",), state_dict)
    text_params = _count(("bert.",), state_dict)
    total = sum(value.numel() for value in state_dict.values())
    names = f"{config.get('vision_model') or 'unregistered ViT'} + {config.get('text_model') or 'unregistered BERT'}"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "language:",
        "- zh",
        "tags:",
        "- chinese-clip",
        "- cn_clip",
        "- cn-clip-pokemon",
        "---",
        "",
        f"# {title}",
        "",
        f"A Chinese-CLIP model in transformers' `ChineseCLIPModel` format, exported by `cn-clip-pokemon export-hf` "
        f"from `{source['file']}` (SHA-256 `{source['sha256'][:16]}…`).",
        "",
        "由 `cn-clip-pokemon export-hf` 从 cn_clip（Chinese-CLIP）检查点导出的 transformers `ChineseCLIPModel` 模型。",
        "",
        "## Architecture",
        "",
        f"- {names}: {total / 1e6:.1f}M parameters (vision {vision_params / 1e6:.1f}M, text {text_params / 1e6:.1f}M, fp32)",
        f"- vision: ViT, {info['vision_layers']} layers, width {info['vision_width']}, "
        f"{info['vision_width'] // info.get('vision_head_width', 64)} heads, patch {info['vision_patch_size']}, "
        f"{info['image_resolution']} x {info['image_resolution']} px input",
        f"- text: BERT, {info['text_num_hidden_layers']} layers, width {info['text_hidden_size']}, "
        f"{info['text_num_attention_heads']} heads, vocabulary {info['vocab_size']} (upstream's Chinese BERT vocab), "
        f"context {context_length} tokens",
        f"- joint embedding: {info['embed_dim']} dimensions; logit scale exp({logit_scale:.4f}) = {math.exp(logit_scale):.2f}",
        "",
        "## Training data",
        "",
    ]
    if trained_on:
        lines.append(f"- {trained_on}")
    else:
        lines.append("- not recorded with the checkpoint")
    if captions:
        shown = "、".join(captions[:10]) + ("…" if len(captions) > 10 else "")
        lines += ["", f"Candidate captions ({len(captions)}, in `{CAPTIONS_FILE}`): {shown}"]
    lines += ["", "## Evaluation", ""]
    if evaluation:
        zero, t2i, i2t = evaluation["zero_shot"], evaluation.get("text_to_image"), evaluation.get("image_to_text")
        lines += [
            f"`cn-clip-pokemon evaluate` on the {evaluation['split']} split of `{Path(evaluation['dataset']).name}` "
            f"({evaluation['pictures']} pictures, {evaluation['names']} names), percentages:",
            "",
            "| zero-shot top-1 | zero-shot top-5 | text→image R@1 | R@5 | R@10 | image→text R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|---|---|---|",
            "| " + " | ".join(
                [f"{zero['top1']:.2f}", f"{zero['top5']:.2f}"]
                + [f"{scores[k]:.2f}" if scores else "–" for scores in (t2i, i2t) for k in ("r1", "r5", "r10")]
            ) + " |",
        ]
    else:
        lines.append("Not evaluated at export (`export-hf --dataset DIR` adds the figures).")
    resolution = info["image_resolution"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import pipeline",
        "",
        f'classifier = pipeline("zero-shot-image-classification", model="{title}")',
        "# as cn-clip-pokemon does: transparency on white, padded to a square",
        'sprite = Image.open("picture.png").convert("RGBA")',
        "side = max(sprite.size)",
        'picture = Image.new("RGB", (side, side), "white")',
        "picture.paste(sprite, ((side - sprite.width) // 2, (side - sprite.height) // 2), sprite)",
        f'print(classifier(picture, candidate_labels={json.dumps((captions or ["皮卡丘", "小火龙"])[:4], ensure_ascii=False)}, hypothesis_template="{{}}"))',
        "```",
        "",
        f"Pictures: the image processor resizes to {resolution} x {resolution} with bicubic filtering and normalizes "
        "like cn_clip (no crop), so a square picture gets cn_clip's input (exactly with `backend=\"pil\"`; "
        "transformers' default torchvision backend shrinks with a slightly different filter). "
        "Texts: the tokenizer is upstream's vocabulary; cn_clip lower-cases texts and turns “ ” into \" first.",
        "",
        *([
            "Framing: this model was trained on pictures cropped to their subject, the background made white "
            "(`build-dataset --framing subject`; `config.json` says so). Crop a picture to its subject first, or "
            "use cn-clip-pokemon below, which frames every picture as it was trained.",
            "",
        ] if loaded.framing == "subject" else []),
        "Back to cn_clip: `cn-clip-pokemon classify --checkpoint THIS_FOLDER`, `load_model(\"THIS_FOLDER\")`, "
        "or fine-tune further with `cn-clip-pokemon train --pretrained THIS_FOLDER`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- export


def export_hf(checkpoint, out, dataset=None, split=EVAL_SPLIT, trained_on=None, device=None, progress=True, **load_options):
    """Write ``checkpoint`` as a transformers ChineseCLIP folder at ``out``; returns a summary dict.

    Nothing is written when the architecture cannot be expressed (:class:`NotExpressible`), when
    ``out`` holds something else, or when the evaluation fails. ``load_options``: ``vision_model``,
    ``text_model`` as for ``load_checkpoint``.
    """
    from cn_clip_pokemon.checkpoint import load_checkpoint
    from cn_clip_pokemon.checkpoint_sources import checkpoint_digest
    from cn_clip_pokemon.files import staged_folder
    from cn_clip_pokemon.owned_files import FILE, listing
    from cn_clip_pokemon.progress import progress_bar

    transformers = require_transformers()
    out = check_out_folder(Path(out).expanduser())
    started = time.perf_counter()
    bar = progress_bar(total=5 if dataset else 4, description="export-hf", unit="step", enabled=progress, leave=False)
    with bar:
        bar.set_postfix_str("loading")
        loaded = load_checkpoint(checkpoint, device=device, **load_options)
        info = loaded.model_config["model_info"]
        hf_architecture(info)  # NotExpressible before anything else happens
        bar.update(1)
        evaluation = None
        if dataset is not None:
            from cn_clip_pokemon.evaluation import evaluate

            bar.set_postfix_str(f"evaluating on {split}")
            evaluation = evaluate(loaded.path, dataset, split=split, loaded=loaded, progress=False, worst=0)
            bar.update(1)
        state_dict = OrderedDict((key, value.detach().cpu()) for key, value in loaded.model.state_dict().items())
        captions = list(loaded.captions or []) or None  # the checkpoint's candidate captions
        path = Path(loaded.path)
        # remembered in the embedding cache's folder when classify or --dataset made one (embedding_cache)
        memo = path.resolve().parent / f"{path.resolve().name}.cache"
        digest = checkpoint_digest(path, memo_dir=memo if memo.is_dir() else None)
        source = {"file": path.name, "path": str(path.resolve()), "sha256": digest}
        if trained_on is None:
            record = training_dataset(path) if path.is_file() else None
            if record and record.get("train_data"):
                trained_on = f"`{record['train_data']}`" + _dataset_description(record["train_data"])
                if record.get("dataset"):
                    trained_on += f", dataset plugin `{record['dataset']}`"
            elif path.is_dir():
                trained_on = _card_training_line(path)
        bar.update(1)

        out.parent.mkdir(parents=True, exist_ok=True)
        cleaned = clean_export_leftovers(out)
        with staged_folder(out) as temporary:
            bar.set_postfix_str("writing")
            write_hf_files(temporary, state_dict, info, loaded.context_length, loaded.framing)
            bar.update(1)
            if captions:
                (temporary / CAPTIONS_FILE).write_text(json.dumps(captions, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            card = model_card(out.name, loaded, source, state_dict, captions, trained_on, evaluation, loaded.context_length)
            (temporary / CARD_FILE).write_text(card, encoding="utf-8")
            from cn_clip_pokemon.version import __version__

            written = listing(temporary)
            written[MARKER] = FILE
            marker = {
                "format": MARKER_FORMAT,
                "written_by": f"cn-clip-pokemon {__version__} export-hf",
                "transformers": transformers.__version__,
                "source": source,
                "model_config": loaded.model_config,
                "files": written,
            }
            (temporary / MARKER).write_text(json.dumps(marker, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            umask = os.umask(0)
            os.umask(umask)
            for name in written:
                os.chmod(temporary / name, 0o666 & ~umask)  # safetensors writes 0600
                with open(temporary / name, "rb") as f:
                    os.fsync(f.fileno())
            check_out_folder(out)  # the folder may have changed while the export was written
        bar.update(1)
    files = {name: (out / name).stat().st_size for name in listing(out)}
    return {
        "out": str(out),
        "files": files,
        "bytes": sum(files.values()),
        "seconds": time.perf_counter() - started,
        "model_config": loaded.model_config,
        "captions": len(captions) if captions else 0,
        "evaluation": evaluation,
        "cleaned": cleaned,
    }


def _card_training_line(folder):
    """The training line of a folder's own model card (an export re-exported), or None."""
    try:
        text = (Path(folder) / CARD_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    section = text.partition("## Training data")[2].strip().splitlines()
    return section[0][2:] if section and section[0].startswith("- ") and "not recorded" not in section[0] else None


def export_hf_arguments(parser):
    from cn_clip_pokemon.arguments import device_name, output_folder

    parser.description = (
        "Write a checkpoint as a Hugging Face transformers ChineseCLIP folder (config.json, model.safetensors, "
        "tokenizer, image processor, a model card README.md, captions.json) that "
        "ChineseCLIPModel.from_pretrained(OUT) and ChineseCLIPProcessor.from_pretrained(OUT) load offline, ready to "
        f"upload to the Hub. Needs transformers: {install_hint('hf')}. A ResNet vision tower (RN50) cannot be "
        "expressed in transformers: the command names the field and stops (exit 2) before writing anything. "
        "OUT is written in a temporary folder and renamed into place; an OUT that is not empty is replaced only "
        "when an earlier export-hf wrote it."
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file (any shape load_model reads), a pretrained name such as ViT-B-16, or a transformers folder")
    parser.add_argument("out", type=output_folder, metavar="OUT", help="the folder to write (new, empty, or an earlier export)")
    parser.add_argument("--dataset", metavar="DIR", help="also evaluate on this built dataset and put the figures in the model card")
    parser.add_argument("--split", default=EVAL_SPLIT, choices=SPLITS, help="the split --dataset is evaluated on (default %(default)s)")
    parser.add_argument(
        "--trained-on", metavar="TEXT",
        help="what the model was trained on, for the model card (default: read from the run's params_*.txt beside checkpoints/)",
    )
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N for the evaluation (default: CUDA when there is one)")
    parser.add_argument("--vision-model", default=None, help="force the vision config name (default: read from the checkpoint)")
    parser.add_argument("--text-model", default=None, help="force the text config name (default: read from the checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def export_hf_command(args):
    from cn_clip_pokemon.arguments import UsageError

    try:
        summary = export_hf(
            args.checkpoint,
            args.out,
            dataset=args.dataset,
            split=args.split,
            trained_on=args.trained_on,
            device=args.device,
            progress=True,  # progress_bar shows it only on a terminal
            vision_model=args.vision_model,
            text_model=args.text_model,
        )
    except NotExpressible as error:
        raise UsageError(f"cannot export {args.checkpoint} to transformers: {error}") from None
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2, default=str))
        return 0
    config = summary["model_config"]
    print(
        f"{summary['out']}: {config.get('vision_model') or 'ViT'} + {config.get('text_model') or 'BERT'}, "
        f"{len(summary['files'])} files, {summary['bytes'] / 1e6:.1f} MB, {summary['seconds']:.1f} s"
    )
    for name, size in summary["files"].items():
        print(f"  {name}  {size:,} bytes")
    for line in summary["cleaned"]:
        print(f"  {line}")
    if summary["evaluation"]:
        zero = summary["evaluation"]["zero_shot"]
        print(f"  evaluated on {summary['evaluation']['split']}: zero-shot top-1 {zero['top1']:.2f}, top-5 {zero['top5']:.2f}")
    print(f'load it: ChineseCLIPModel.from_pretrained("{summary["out"]}"), ChineseCLIPProcessor.from_pretrained("{summary["out"]}")')
    return 0
