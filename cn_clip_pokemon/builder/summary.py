"""What a build reports: ``dataset_info.json`` (names, image size, split counts, each image's source,
what was skipped), the summary printed after a build, and the error when nothing could be built."""
import json
import shutil
import sys

from cn_clip_pokemon.dataset_format import INFO_FILE, SPLITS
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.safe_reading import printable

INFO_FORMAT = 1
MESSAGE_ENTRIES = 20  # skipped entries named in a one-line error; the command prints them all
CONTEXT_LENGTH = 52  # upstream's default --context-length, for the tokenizer report


def dataset_info(naming, captions_of, image_size, framing, split_counts, skipped, split_by, seed, templates,
                 valid_fraction, test_fraction, report, built):
    """The fields of dataset_info.json, its "images" left None (:func:`write_info` copies them in)."""
    return {
        "format": INFO_FORMAT,
        # every Pokemon's name, or every caption (grouped; "number" of a picture is its group)
        "names": [caption for captions in captions_of.values() for caption in captions],
        "naming": naming,
        "groups": len(captions_of),
        "image_size": image_size,
        "framing": framing,  # dataset_format.FRAMINGS: how each picture was framed before it was padded square
        "splits": split_counts,
        "images": None,  # written from the images fragment
        "skipped": skipped,
        "split_by": split_by,
        "seed": seed,
        "templates": templates,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "names_with_unknown_tokens": report["unknown"],
        "longest_text_tokens": report["longest_tokens"],
        "texts_over_context_length": report["texts_over_context_length"],
        "captions_tokenizing_identically": report["identical"] if naming != "pokedex" else [],
        "counts": count_entries(built, skipped),
    }


def count_entries(built, skipped):
    """What became of the input: pictures built, entries skipped, and how many of each kind."""
    by_kind = {}
    for entry in skipped:
        by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + 1
    return {"built": built, "skipped": len(skipped), "skipped_by_kind": dict(sorted(by_kind.items()))}


class NothingToBuild(UserError):
    """No input entry could be used; ``skipped`` lists every one with its reason."""

    def __init__(self, start, skipped, naming="pokedex"):
        self.skipped = skipped
        if skipped:
            kinds = ", ".join(f"{count} {kind}" for kind, count in count_entries(0, skipped)["skipped_by_kind"].items())
            listed = "; ".join(f"{entry['file']} ({entry['reason']})" for entry in skipped[:MESSAGE_ENTRIES])
            more = f"; and {len(skipped) - MESSAGE_ENTRIES} more" if len(skipped) > MESSAGE_ENTRIES else ""
            detail = f"; all {len(skipped)} entries skipped ({kinds}): {listed}{more}"
        else:
            detail = " (the folder is empty)"
        hint = {
            "pokedex": "Name pictures like 0025皮卡丘.png, or put them in folders named like 0025皮卡丘/; for "
                       "captions that are not Pokemon names, use --any-names (the file or folder name is the caption) "
                       "or --manifest FILE (a CSV, TSV or JSONL of paths and captions)",
            "any-names": "Name pictures by their caption (红色圆形.png), or put them in folders named by it (红色圆形/)",
            "manifest": "Give each row a picture's path (relative to the manifest) and a caption",
        }[naming]
        super().__init__(f"{start}{detail}. {hint}")


def write_info(path, info, images_fragment):
    """dataset_info.json with its "images" object copied from a file, so it is never all in memory."""
    head = json.dumps(info, ensure_ascii=False, indent=1)
    marker = '"images": null'
    before, after = head.split(marker, 1)
    # Every text in it went through printable(); backslashreplace is the guard that keeps the file
    # valid UTF-8 (and valid JSON: a stray surrogate becomes a \u escape) whatever slips through.
    with open(path, "w", encoding="utf-8", errors="backslashreplace") as out, \
            open(images_fragment, encoding="utf-8") as fragment:
        out.write(before + '"images": {\n')
        shutil.copyfileobj(fragment, out)
        out.write("\n }" + after)


def _split_by_shown(summary):
    """How the summary names the split: a caption dataset's groups stand where Pokemon would."""
    if summary.get("naming", "pokedex") != "pokedex" and summary["split_by"] == "pokemon":
        return "caption"
    return summary["split_by"]


def print_summary(summary, file=None):
    file = file or sys.stdout
    splits = summary["splits"]
    for note in summary.get("cleaned", ()):
        print(f"note: {note}", file=file)
    if summary.get("naming", "pokedex") == "pokedex":
        what = f"{len(summary['names'])} Pokemon"
    else:
        what = f"{len(summary['names'])} captions in {summary['groups']} groups"
    print(
        f"built {printable(summary['out_dir'])}: {what}, "
        + ", ".join(f"{split} {splits[split]['images']} pictures/{splits[split]['pairs']} pairs" for split in SPLITS)
        + f"; {summary['image_size']} px, split by {_split_by_shown(summary)} (seed {summary['seed']}), "
        f"{summary['seconds']:.1f} s ({summary['pictures_per_second']:.0f} pictures/s, "
        f"{summary['workers']} process{'es' if summary['workers'] != 1 else ''})",
        file=file,
    )
    if summary.get("kept"):
        shown = ", ".join(printable(path) for path in summary["kept"][:MESSAGE_ENTRIES])
        more = f" and {len(summary['kept']) - MESSAGE_ENTRIES} more" if len(summary["kept"]) > MESSAGE_ENTRIES else ""
        print(f"kept {len(summary['kept'])} entries build-dataset did not write: {shown}{more}", file=file)
    for split in SPLITS:
        if splits[split]["images"] == 0:
            print(
                f"warning: the {split} split is empty: "
                + ("training has nothing to learn from" if split == "train" else f"nothing to {'validate' if split == 'valid' else 'test'} on")
                + "; add pictures, or change --valid-fraction/--test-fraction",
                file=file,
            )
    if summary.get("test_captions_unseen_in_training"):
        print(
            f"warning: {summary['test_captions_unseen_in_training']} of {summary['test_captions']} test captions never "
            "occur in training (each caption's pictures lie in one split), so the test split measures captions the "
            "model never saw; to test new pictures of trained captions, give each caption several pictures (a folder "
            "per caption with --any-names, or several --manifest rows) and --split-by view",
            file=file,
        )
    if summary["names_with_unknown_tokens"]:
        listed = ", ".join(f"{name} ({' '.join(tokens)})" for name, tokens in summary["names_with_unknown_tokens"].items())
        print(f"note: characters missing from Chinese-CLIP's vocabulary become [UNK] in: {listed}", file=file)
    if summary.get("texts_over_context_length"):
        print(f"note: {summary['texts_over_context_length']} texts are longer than upstream's default context length "
              f"{CONTEXT_LENGTH} tokens (the longest {summary['longest_text_tokens']}); training cuts them at "
              "--context-length", file=file)
    if summary.get("captions_tokenizing_identically"):
        listed = "; ".join(" = ".join(group) for group in summary["captions_tokenizing_identically"][:MESSAGE_ENTRIES])
        print(f"note: these captions tokenize identically, so each set is one group (never in one batch): {listed}",
              file=file)
    counts = summary["counts"]
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts["skipped_by_kind"].items())
    print(f"every input entry accounted for: {counts['built']} pictures built, {counts['skipped']} skipped"
          + (f" ({kinds})" if kinds else ""), file=file)
    if summary["skipped"]:
        print_skipped(summary["skipped"], file, limit=50)
        if len(summary["skipped"]) > 50:
            print(f"  ... and {len(summary['skipped']) - 50} more (all listed in {INFO_FILE})", file=file)


def print_skipped(skipped, file, limit=None):
    print(f"skipped {len(skipped)} entries:", file=file)
    for entry in skipped[:limit]:
        print(f"  {entry['file']}: {entry['reason']}", file=file)
