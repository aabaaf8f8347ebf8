"""`cn-clip-pokemon classify`: which Pokemon is this? Pictures ranked among names.

Every picture is opened by ``images.read_picture`` and goes through the checkpoint's preprocess
(transparency composited on white, cropped to its subject for a checkpoint trained on framed pictures) and padded to
a square with ``images.fit_square``, exactly as the dataset builder stores pictures, before
upstream's own ``image_transform`` (``encoding`` encodes it). The names' embeddings are cached
beside the checkpoint, so a second call encodes only the pictures.
"""
import json
import sys
from pathlib import Path

from cn_clip_pokemon.dataset_format import check_templates
from cn_clip_pokemon.encoding import DEFAULT_TEMPLATES, encode_pictures, name_embeddings, require_positive, zero_shot_probabilities
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.model_options import add_model_options, model_options

PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".svg", ".svgz"}


def read_names_file(path):
    """One name per line (blank lines and lines starting with # are skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except OSError as error:
        raise UserError(f"cannot read the names file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UserError(f"names file {path} is not UTF-8 text: save it as UTF-8, one name per line") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def candidate_names(names=None, names_file=None, loaded=None):
    """The names to classify among: given ones; else the captions the checkpoint ``loaded`` was
    trained on (:attr:`LoadedCheckpoint.captions`); else all of the Pokedex, with one line on stderr
    saying so when ``loaded`` records none. A given name of a Pokemon in any language or older
    translation becomes its official name, other text is simplified; deduplicated."""
    from cn_clip_pokemon.pokedex import Pokedex, lookup_name

    if names is None and names_file is None:
        if loaded is not None and loaded.captions:
            return list(loaded.captions)
        pokedex_names = Pokedex.load().names()
        if loaded is not None:
            print(
                f"cn-clip-pokemon: note: {loaded.path} records no captions of its training set: ranking the "
                f"{len(pokedex_names)} Pokemon of the Pokedex (give --names or --names-file to choose)",
                file=sys.stderr,
            )
        return pokedex_names
    given = []
    for name in names or []:
        given.extend(part.strip() for part in name.replace("，", ",").split(",") if part.strip())
    if names_file:
        given.extend(read_names_file(names_file))
    if not given:
        raise UserError("no candidate names: --names and --names-file gave none")
    return list(dict.fromkeys(lookup_name(name)[0] for name in given))


class Classifier:
    """Top-k names for pictures, with the name embeddings cached beside the checkpoint.

    >>> classifier = Classifier("experiments/pokemon/checkpoints/epoch_latest.pt")
    >>> classifier.classify_paths(["pikachu.png"], top_k=3)
    """

    def __init__(self, checkpoint, names=None, templates=DEFAULT_TEMPLATES, device=None, cache=True, progress=True, loaded=None, **load_options):
        from cn_clip_pokemon.checkpoint import load_checkpoint

        self.templates = check_templates(templates or DEFAULT_TEMPLATES)  # before the model loads
        self.loaded = loaded or load_checkpoint(checkpoint, device=device, **load_options)
        self.names = list(names) if names is not None else candidate_names(loaded=self.loaded)
        # where the names came from: given, the checkpoint's own captions, or the Pokedex
        self.names_from = "given" if names is not None else "checkpoint" if self.loaded.captions else "pokedex"
        if not self.names:
            raise UserError("no names to classify among")
        self.progress = progress
        self.name_embeddings = name_embeddings(self.loaded, self.names, self.templates, cache=cache, progress=progress)

    def probabilities(self, picture_embeddings):
        """Softmax over the names of ``logit_scale * cosine`` (the model's learned temperature)."""
        return zero_shot_probabilities(self.loaded, picture_embeddings, self.name_embeddings)

    def classify_images(self, images, top_k=5, batch_size=32):
        """For each PIL picture, ``[(name, probability), ...]`` best first."""
        require_positive(top_k=top_k, batch_size=batch_size)
        images = list(images)
        embeddings = encode_pictures(self.loaded, images, batch_size=batch_size, progress=self.progress and len(images) > batch_size)
        probabilities = self.probabilities(embeddings)
        top = probabilities.topk(min(top_k, len(self.names)), dim=-1)
        return [
            [(self.names[index], float(value)) for value, index in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)
        ]

    def classify_paths(self, paths, top_k=5, batch_size=32):
        """``[{"picture", "predictions": [{"name", "number", "probability"}]}]`` for picture files.

        A picture that cannot be opened gets ``"error"`` instead of predictions.
        """
        return self.classify_and_open(paths, top_k=top_k, batch_size=batch_size)[0]

    def classify_and_open(self, paths, top_k=5, batch_size=32):
        """``(results, pictures)``: :meth:`classify_paths`' results, and for each the PIL picture
        that was classified (None where it could not be opened), for drawing them."""
        from cn_clip_pokemon.images import composite_on_white, read_picture
        from cn_clip_pokemon.pokedex import lookup_name

        read, results = [], []
        for path in paths:
            try:
                read.append(read_picture(path))  # transparency kept: the preprocess frames it
                results.append({"picture": str(path)})
            except UserError as error:
                read.append(None)
                results.append({"picture": str(path), "error": str(error)})
        images = [image for image in read if image is not None]
        ranked = iter(self.classify_images(images, top_k=top_k, batch_size=batch_size) if images else [])
        for result, image in zip(results, read):
            if image is not None:
                result["predictions"] = [
                    {"name": name, "number": lookup_name(name)[1], "probability": probability}
                    for name, probability in next(ranked)
                ]
        return results, [None if image is None else composite_on_white(image) for image in read]


def expand_pictures(paths):
    """Picture paths, with folders expanded to the pictures directly inside them (sorted)."""
    expanded = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
            if not inside:
                raise UserError(f"folder {path} has no pictures ({', '.join(sorted(PICTURE_SUFFIXES))})")
            expanded.extend(inside)
        else:
            expanded.append(path)
    return expanded


def classify(pictures, checkpoint, names=None, templates=DEFAULT_TEMPLATES, top_k=5, device=None, cache=True, progress=True):
    """Python API of `cn-clip-pokemon classify`: the list :meth:`Classifier.classify_paths` returns."""
    classifier = Classifier(checkpoint, names=names, templates=templates, device=device, cache=cache, progress=progress)
    return classifier.classify_paths(expand_pictures(pictures), top_k=top_k)


def _percent(probability):
    return f"{probability * 100:6.2f}%"


def classify_arguments(parser):
    from cn_clip_pokemon.arguments import output_file, positive_int, prompt_template

    parser.description = (
        "Which Pokemon is this? Prints the top-k names with probabilities for each picture. "
        "Pictures are opened like the dataset builder does (transparency on white, padded square). "
        "Name embeddings are cached beside the checkpoint, so only the first call encodes the names."
    )
    parser.add_argument("pictures", nargs="+", metavar="PICTURE", help="picture files (PNG, JPEG, GIF, WebP, ...) or folders of them")
    add_model_options(parser)
    parser.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="candidate names, separated by spaces or commas (default: the captions the checkpoint was "
        "trained on; all 1025 Pokemon for a checkpoint that records none); "
        "any name of a Pokemon (an older translation, 繁體, English, 日本語) becomes its official "
        "Simplified Chinese name; other traditional characters are converted to simplified",
    )
    parser.add_argument("--names-file", metavar="FILE", help="a UTF-8 file of candidate names, one per line")
    parser.add_argument(
        "--template",
        action="append",
        type=prompt_template,
        metavar="TEXT",
        help="prompt template with {} for the name, repeatable; embeddings of several are averaged "
        "(default: the bare name, as the Pokemon dataset trains by default)",
    )
    parser.add_argument("--top-k", type=positive_int, default=5, help="names to show per picture (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--out", type=output_file, metavar="GRID.png", help="also write a PNG grid of the pictures with their top names")


def classify_command(args):
    names = candidate_names(args.names, args.names_file) if (args.names or args.names_file) else None
    pictures = expand_pictures(args.pictures)
    classifier = Classifier(
        args.checkpoint,
        names=names,
        templates=check_templates(args.template),  # deduplicated like the builder's; default the bare name
        device=args.device,
        cache=not args.no_cache,
        **model_options(args),
    )
    results, opened = classifier.classify_and_open(pictures, top_k=args.top_k, batch_size=args.batch_size)
    if args.out:
        from cn_clip_pokemon.grids import save_grid

        cells = [
            (
                image,
                [f"{p['name']} {p['probability'] * 100:.1f}%" if i == 0 else f"~{p['name']} {p['probability'] * 100:.1f}%" for i, p in enumerate(result["predictions"][:3])],
            )
            for result, image in zip(results, opened)
            if image is not None
        ]
        if cells:
            save_grid(cells, args.out)
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(classifier.loaded.path),
                    "names": len(classifier.names),
                    "names_from": classifier.names_from,
                    "templates": classifier.templates,
                    "results": results,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        for result in results:
            if "error" in result:
                continue  # said once, on stderr, below
            print(result["picture"])
            for prediction in result["predictions"]:
                number = f"  #{prediction['number']}" if prediction["number"] else ""
                print(f"  {_percent(prediction['probability'])}  {prediction['name']}{number}")
    if args.out and any("predictions" in r for r in results):
        print(f"grid: {args.out}", file=sys.stderr)
    failed = [result for result in results if "error" in result]
    for result in failed:
        print(f"cn-clip-pokemon: error: {result['error']}", file=sys.stderr)
    return 1 if failed else 0
