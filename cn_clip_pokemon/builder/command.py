"""`build-dataset`: its arguments and the command, which builds (build.py) and prints the summary."""
import sys
from pathlib import Path

from cn_clip_pokemon.builder.build import DEFAULT_IMAGE_SIZE, IMAGE_SIZES, build_dataset
from cn_clip_pokemon.builder.splits import SPLIT_BY
from cn_clip_pokemon.builder.summary import NothingToBuild, print_skipped, print_summary
from cn_clip_pokemon.dataset_format import FRAMINGS
from cn_clip_pokemon.safe_reading import is_utf8, printable


def build_dataset_arguments(parser):
    from cn_clip_pokemon.arguments import fraction, positive_int, prompt_template, whole_number_between

    parser.description = (
        "Build upstream Chinese-CLIP's dataset (TSV, JSONL and LMDB for train/valid/test) from a "
        "folder of pictures named like 0025皮卡丘.png, or one folder per Pokemon (0025皮卡丘/*.png); "
        "or, with any captions, from pictures named by their caption (--any-names) or a CSV/TSV/JSONL "
        "manifest of picture paths and captions (--manifest). Every entry is built or listed with the reason it was skipped (--strict stops instead). The build "
        "is atomic: a failed or killed run leaves the previous dataset as it was, and the next run removes "
        "what it left behind."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="the picture folder")
    source.add_argument(
        "--manifest", type=Path, metavar="FILE",
        help="instead of --images: a .csv, .tsv (tab, no quoting) or .jsonl file of pictures and captions, with columns "
        "path and caption (or open_clip's filepath and title; a CSV/TSV's first line names them); paths are relative "
        "to the manifest's folder; several rows with one path give a picture several captions, and so does a JSONL "
        "caption list. Bad rows are skipped with MANIFEST:LINE and the reason",
    )
    parser.add_argument(
        "--any-names", action="store_true",
        help="with --images: each file's name without its extension (红色圆形.png), or its folder's name "
        "(红色圆形/1.png), is the caption as it is; no Pokedex, no number needed (0001红色圆形.png is "
        "\"0001红色圆形\"); put several pictures of one caption in a folder",
    )
    parser.add_argument(
        "--no-t2s", action="store_true",
        help="keep --any-names/--manifest captions as written (default: traditional Chinese becomes simplified, "
        "like Pokemon names)",
    )
    parser.add_argument(
        "--out", type=dataset_folder, required=True,
        help="the dataset folder, e.g. ${DATAPATH}/datasets/pokemon: new, empty, or a dataset built here, whose "
        "files the build replaces; what else is in it (upstream's *_feat.jsonl from extract_features, predictions, "
        "your notes) is kept, unless it takes a name the build writes (then it is refused). A folder without "
        "build-dataset's dataset_info.json is refused; a symlink is followed and stays a link",
    )
    parser.add_argument("--image-size", type=whole_number_between(*IMAGE_SIZES), default=DEFAULT_IMAGE_SIZE, help="stored picture size in pixels (square, white padding; default 224)")
    parser.add_argument(
        "--split-by", choices=SPLIT_BY, default="auto",
        help="view: unseen pictures of seen Pokemon in valid/test; animation: whole animations (a view such as "
        "the shiny back: VIEW_00, VIEW_01, ...) in valid/test, so test pictures are views never seen for that "
        "Pokemon, and every Pokemon keeps one in train; pokemon: unseen Pokemon; auto (default): view when most Pokemon have 2+ pictures. With any captions, a caption group "
        "(pictures sharing captions) stands for a Pokemon",
    )
    parser.add_argument(
        "--framing", choices=FRAMINGS, default="as-is",
        help="as-is (default): each picture keeps its own frame, put on white; subject: each is cropped to its "
        "subject, its background made white (transparent pixels, the one colour around it, or a busy background "
        "cut away with GrabCut, about 0.1 s a picture), so a model trained on it sees a user's picture framed the "
        "same way by classify, search, evaluate and the page (for sprites, product shots and photos of one thing; "
        "a photo with no one subject keeps its frame)",
    )
    parser.add_argument("--valid-fraction", type=fraction, default=0.1, help="share of pictures (or Pokemon) for valid (default 0.1)")
    parser.add_argument("--test-fraction", type=fraction, default=0.1, help="share of pictures (or Pokemon) for test (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument(
        "--template", dest="templates", action="append", default=None, metavar="TEXT", type=prompt_template,
        help="prompt template with {} for the name, e.g. 一张{}的图片 (repeatable; default: the bare name)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad file instead of skipping it")
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: every available core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def dataset_folder(text):
    """An argparse type: a dataset folder's path, in UTF-8 (upstream's LMDB reader opens it as UTF-8 text)."""
    import argparse

    if not is_utf8(text):
        raise argparse.ArgumentTypeError(
            f"{printable(text)} is not valid UTF-8, and training opens the dataset by a UTF-8 path: "
            "choose a folder name in UTF-8"
        )
    return Path(text)


def build_dataset_command(args):
    from cn_clip_pokemon.arguments import UsageError

    if args.any_names and args.manifest is not None:
        raise UsageError("--any-names goes with --images; a --manifest names its captions itself")
    if args.no_t2s and not (args.any_names or args.manifest is not None):
        raise UsageError("--no-t2s keeps captions as written, with --any-names or --manifest; "
                         "Pokedex names are always simplified")
    if args.valid_fraction + args.test_fraction >= 1:
        raise UsageError(
            f"--valid-fraction {args.valid_fraction} and --test-fraction {args.test_fraction} add up to 1 or more: "
            "train would get no picture; give smaller shares (0.1 each by default)"
        )
    try:
        summary = _build_from_args(args)
    except NothingToBuild as error:
        # The one-line error names the first few; here every one is named, above it.
        print_skipped(error.skipped, sys.stderr)
        raise
    print_summary(summary)
    return 0


def _build_from_args(args):
    return build_dataset(
        args.images,
        args.out,
        image_size=args.image_size,
        framing=args.framing,
        split_by=args.split_by,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        templates=args.templates,
        strict=args.strict,
        workers=args.workers,
        progress=not args.no_progress,
        any_names=args.any_names,
        manifest=args.manifest,
        t2s=not args.no_t2s,
    )
