"""Which Pokemon is this? `classify` pictures among names, `search` a built dataset by text or picture.

Name embeddings depend only on the checkpoint's weights, the names, the prompt templates and the
context length, so they are computed once and kept in ``<checkpoint>.cache/`` beside the checkpoint
(keyed by the SHA-256 of the checkpoint file, remembered while its size and mtime stay the same); a
second call encodes only the pictures. A dataset split's picture embeddings are cached the same way,
keyed by the checkpoint and the split's picture file (``embedding_cache`` says where and how; a
split is read through ``dataset_split.SplitPictures``).

Every picture is opened by ``images.open_picture`` (transparency composited on white) and padded to
a square with ``images.fit_square``, exactly as the dataset builder stores pictures, before
upstream's own ``image_transform``: the checkpoint's ``preprocess`` (``images.PicturePreprocess``),
the same one the Python API's ``load_model`` returns. Texts go through upstream's ``_preprocess_text`` and
``tokenize`` with the model's context length (52 for upstream's models), as in training.
"""
import json
import sys
from pathlib import Path

from cn_clip_pokemon import embedding_cache
from cn_clip_pokemon.dataset_format import check_templates, fill_template
from cn_clip_pokemon.errors import UserError

DEFAULT_TEMPLATES = ("{}",)
PICTURE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".svg", ".svgz"}


# --------------------------------------------------------------------------- encoding


def _progress(iterable, total, description, enabled):
    from cn_clip_pokemon.progress import progress_bar

    return progress_bar(iterable, total=total, description=description, unit="batch", enabled=enabled, leave=False)


def fill_templates(name, templates):
    """The texts of one name: each template filled (the builder's rule), then upstream's text preprocessing."""
    from cn_clip.eval.data import _preprocess_text

    return [_preprocess_text(fill_template(template, name)) for template in templates]


def require_positive(**values):
    """A UserError naming the first of ``values`` that is not a whole number of at least 1."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a whole number of at least 1, not {value!r}")


def normalized_embeddings(loaded, features, what):
    """``features`` L2-normalized, on the CPU; a one-line UserError when any is NaN, infinite or zero
    (weights that passed the loader's checks can still overflow), so no NaN reaches a score or JSON."""
    norms = features.norm(dim=-1, keepdim=True)
    normalized = features / norms
    if not bool(normalized.isfinite().all()):
        raise UserError(
            f"{loaded.path}: the model gives NaN, infinite or zero embeddings for these {what}, so no score "
            "would mean anything: its weights are damaged or overflow (a diverged run?); use another checkpoint"
        )
    return normalized.cpu()


def encode_texts(loaded, texts, batch_size=256, progress=True, description="encoding texts"):
    """L2-normalized text embeddings ``[len(texts), embed_dim]`` (float32, on the CPU)."""
    import torch
    from cn_clip.clip import tokenize

    model = loaded.model
    device = next(model.parameters()).device
    chunks = []
    batches = range(0, len(texts), batch_size)
    with torch.inference_mode():
        for start in _progress(batches, len(batches), description, progress):
            tokens = tokenize(texts[start : start + batch_size], context_length=loaded.context_length)
            # Drop the columns that are padding in every row: the attention mask already gives them
            # zero weight, so the embeddings are the same, and names (a few tokens of 52) encode ~5x faster.
            used = int(tokens.ne(model.tokenizer.vocab["[PAD]"]).sum(dim=1).max())
            tokens = tokens[:, : max(used, 1)].to(device)
            features = model.encode_text(tokens).float()
            chunks.append(normalized_embeddings(loaded, features, "texts"))
    if not chunks:
        return torch.zeros(0, loaded.model.text_projection.shape[1])
    return torch.cat(chunks)


def encode_names(loaded, names, templates=DEFAULT_TEMPLATES, batch_size=256, progress=True):
    """One embedding per name: the mean of its normalized template embeddings, normalized again
    (upstream's zero_shot_classifier), ``[len(names), embed_dim]``."""
    texts = [text for name in names for text in fill_templates(name, templates)]
    embeddings = encode_texts(loaded, texts, batch_size=batch_size, progress=progress, description="encoding names")
    embeddings = embeddings.reshape(len(names), len(templates), -1).mean(dim=1)
    return embeddings / embeddings.norm(dim=-1, keepdim=True)


def name_embeddings(loaded, names, templates=DEFAULT_TEMPLATES, cache=True, batch_size=256, progress=True):
    """:func:`encode_names`, cached beside the checkpoint per (checkpoint, names, templates)."""
    names, templates = list(names), list(templates)
    if not cache:
        return encode_names(loaded, names, templates, batch_size=batch_size, progress=progress)
    parts = dict(embedding_cache.checkpoint_identity(loaded), kind="names", names=names, templates=templates, context_length=loaded.context_length)
    path = embedding_cache.cache_dir_for(loaded.path) / f"names-{embedding_cache.cache_key(parts)}.pt"
    cached = embedding_cache.read_cache(path, parts)
    if cached is not None:
        return cached["embeddings"]
    embeddings = encode_names(loaded, names, templates, batch_size=batch_size, progress=progress)
    embedding_cache.write_cache(path, parts, embeddings=embeddings)
    return embeddings


def zero_shot_probabilities(loaded, image_embeddings, name_embeddings):
    """``[pictures, names]`` softmax over the names of ``logit_scale * cosine`` (the model's learned
    temperature), for normalized embeddings: the one zero-shot scoring of classify, evaluate and --perturb."""
    logit_scale = loaded.model.logit_scale.detach().float().exp().cpu()
    return (logit_scale * image_embeddings @ name_embeddings.T).softmax(dim=-1)


def encode_pictures(loaded, images, count=None, batch_size=32, progress=True, description="encoding pictures",
                    each_batch=None, lock=None):
    """L2-normalized picture embeddings ``[n, embed_dim]`` for an iterable of PIL pictures.

    ``each_batch(done)``, when given, is called after each batch with the pictures encoded so far;
    ``lock``, when given, is held around each forward pass only (pictures are prepared outside it),
    so another user of the model waits for one batch at most.
    """
    import contextlib

    import torch

    model = loaded.model
    device = next(model.parameters()).device
    count = len(images) if count is None else count
    chunks, batch = [], []
    done = [0]

    def flush():
        with lock or contextlib.nullcontext(), torch.inference_mode():
            features = model.encode_image(torch.stack(batch).to(device)).float()
        chunks.append(normalized_embeddings(loaded, features, "pictures"))
        done[0] += len(batch)
        batch.clear()
        if each_batch is not None:
            each_batch(done[0])

    batches = -(-count // batch_size) if count else None
    bar = _progress(None, batches, description, progress)
    for image in images:
        # loaded.preprocess: the one PicturePreprocess every door uses (on white, padded square, upstream's transform)
        batch.append(loaded.preprocess(image))
        if len(batch) == batch_size:
            flush()
            bar.update(1)
    if batch:
        flush()
        bar.update(1)
    bar.close()
    if not chunks:
        return torch.zeros(0, loaded.model.text_projection.shape[1])
    return torch.cat(chunks)


# --------------------------------------------------------------------------- classify


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
        from cn_clip_pokemon.images import open_picture
        from cn_clip_pokemon.pokedex import lookup_name

        opened, results = [], []
        for path in paths:
            try:
                opened.append(open_picture(path))
                results.append({"picture": str(path)})
            except UserError as error:
                opened.append(None)
                results.append({"picture": str(path), "error": str(error)})
        images = [image for image in opened if image is not None]
        ranked = iter(self.classify_images(images, top_k=top_k, batch_size=batch_size) if images else [])
        for result, image in zip(results, opened):
            if image is not None:
                result["predictions"] = [
                    {"name": name, "number": lookup_name(name)[1], "probability": probability}
                    for name, probability in next(ranked)
                ]
        return results, opened


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


def add_model_options(parser):
    """The options of every command that loads a checkpoint: --checkpoint, --device, --vision-model,
    --text-model, --batch-size, --no-cache (classify, search and evaluate take the same)."""
    from cn_clip_pokemon.arguments import device_name, positive_int

    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        help="a checkpoint file (ours, upstream's fine-tune or pretrained file, a raw state dict) "
        "or an upstream pretrained name such as ViT-B-16",
    )
    parser.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: CUDA when there is one)")
    parser.add_argument("--vision-model", default=None, help="force the vision config name (default: read from the checkpoint)")
    parser.add_argument("--text-model", default=None, help="force the text config name (default: read from the checkpoint)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="pictures per forward pass (default 32)")
    parser.add_argument(
        "--no-cache", action="store_true", help="encode every name or picture again instead of using <checkpoint>.cache/"
    )


def model_options(args):
    """The model names :func:`add_model_options` parsed, as ``load_checkpoint`` keywords."""
    return {"vision_model": args.vision_model, "text_model": args.text_model}


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


# --------------------------------------------------------------------------- split embeddings


def split_embeddings(loaded, pictures, cache=True, batch_size=32, progress=True, each_batch=None, lock=None):
    """Embeddings of every picture of a split, ``[len(pictures.image_ids), embed_dim]``, cached.

    ``each_batch`` and ``lock`` as for :func:`encode_pictures` (not called when the cache answers).
    """
    from cn_clip_pokemon.checkpoint import file_digest

    def compute():
        return encode_pictures(
            loaded,
            pictures.pictures(),
            count=len(pictures.image_ids),
            batch_size=batch_size,
            progress=progress,
            description=f"encoding {pictures.split} pictures",
            each_batch=each_batch,
            lock=lock,
        )

    if not cache:
        return compute()
    import torch

    cache_dir = embedding_cache.cache_dir_for(loaded.path)
    parts = dict(
        embedding_cache.checkpoint_identity(loaded),
        kind="pictures",
        split=pictures.split,
        source_sha256=file_digest(pictures.storage, memo_dir=cache_dir),
        resolution=loaded.input_resolution,
    )
    path = cache_dir / f"pictures-{pictures.split}-{embedding_cache.cache_key(parts)}.pt"
    cached = embedding_cache.read_cache(path, parts)
    if cached is not None and cached["image_ids"].tolist() == pictures.image_ids:
        return cached["embeddings"]
    embeddings = compute()
    embedding_cache.write_cache(path, parts, embeddings=embeddings, image_ids=torch.tensor(pictures.image_ids, dtype=torch.long))
    return embeddings


# --------------------------------------------------------------------------- search


def search(
    checkpoint,
    dataset_dir,
    query=None,
    image=None,
    split="test",
    top_k=10,
    device=None,
    cache=True,
    progress=True,
    loaded=None,
    batch_size=32,
    pictures=None,
    embeddings=None,
    **load_options,
):
    """Best-matching pictures of a dataset split for a text ``query`` or a picture file ``image``.

    Returns ``{"query", "number", "kind", "split", "results": [{"rank", "image_id", "score", "name",
    "number", "picture"}]}``; ``score`` is the cosine similarity, ``picture`` the file the picture was
    built from (None for a dataset without dataset_info.json). A text that is any name of a Pokemon
    (official, traditional, English, Japanese, an older translation) searches for its official name,
    which ``query`` and ``number`` give (``number`` is None for any other text and for a picture;
    a result's ``number`` likewise). A picture query's own copy in the split (identical embedding)
    is kept: it shows the search works, and ranks first.

    ``pictures``: an open :class:`~cn_clip_pokemon.dataset_split.SplitPictures` to search (then
    ``dataset_dir`` and ``split`` are not read); it stays open, its caller closes it. Without it
    the split is opened here and closed before returning. ``embeddings``: that split's picture
    embeddings, already computed (:func:`split_embeddings`), so they are not read again.
    """
    from cn_clip_pokemon.checkpoint import load_checkpoint
    from cn_clip_pokemon.dataset_split import SplitPictures
    from cn_clip_pokemon.pokedex import lookup_name

    if (query is None) == (image is None):
        raise UserError("search needs either a text or --image PICTURE (not both)")
    require_positive(top_k=top_k, batch_size=batch_size)
    number = None
    if query is not None:
        query, number = lookup_name(query)
        if not query:
            raise UserError("the search text is empty: give a name or a description, or search by picture")
    loaded = loaded or load_checkpoint(checkpoint, device=device, **load_options)
    owned = pictures is None
    if owned:
        pictures = SplitPictures(dataset_dir, split)
    try:
        if embeddings is None:
            embeddings = split_embeddings(loaded, pictures, cache=cache, batch_size=batch_size, progress=progress)
        if query is not None:
            probe = encode_texts(loaded, [fill_templates(query, ["{}"])[0]], progress=False)
        else:
            from cn_clip_pokemon.images import open_picture

            probe = encode_pictures(loaded, [open_picture(image)], progress=False)
        scores = (probe @ embeddings.T)[0]
        top = scores.topk(min(top_k, len(pictures.image_ids)))
        results = []
        for rank, (score, index) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
            image_id = pictures.image_ids[index]
            label = pictures.label(image_id)
            results.append(
                {"rank": rank, "image_id": image_id, "score": score, "name": label,
                 "number": lookup_name(label)[1] if label else None, "picture": pictures.source(image_id)}
            )
        return {
            "query": query if query is not None else str(image),
            "number": number,
            "kind": "text" if query is not None else "picture",
            "split": pictures.split,
            "results": results,
        }
    finally:
        if owned:
            pictures.close()


def search_arguments(parser):
    from cn_clip_pokemon.arguments import output_file, positive_int, search_text

    parser.description = (
        "Search the pictures of a built dataset split: by text (any name of a Pokemon, such as 喷火龙, "
        "噴火龍 or Charizard, searched as its official name; or any description) or, with --image, by a picture (most similar pictures first). The split's "
        "picture embeddings are cached beside the checkpoint."
    )
    parser.add_argument("query", nargs="?", type=search_text, help="the text to search for (omit it with --image)")
    parser.add_argument("--image", metavar="PICTURE", help="search by this picture instead of a text")
    add_model_options(parser)
    parser.add_argument("--dataset", required=True, metavar="DIR", help="a dataset folder made by `cn-clip-pokemon build-dataset`")
    parser.add_argument("--split", default="test", help="train, valid or test (default test)")
    parser.add_argument("--top-k", type=positive_int, default=10, help="pictures to show (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--out", type=output_file, metavar="GRID.png", help="also write a PNG grid of the pictures found")


def search_command(args):
    from cn_clip_pokemon.checkpoint import load_checkpoint
    from cn_clip_pokemon.arguments import UsageError
    from cn_clip_pokemon.dataset_split import SplitPictures

    if (args.query is None) == (args.image is None):
        raise UsageError("give a search text or --image PICTURE (exactly one)")
    loaded = load_checkpoint(args.checkpoint, device=args.device, **model_options(args))
    with SplitPictures(args.dataset, args.split) as pictures:
        found = search(
            args.checkpoint,
            args.dataset,
            query=args.query,
            image=args.image,
            top_k=args.top_k,
            cache=not args.no_cache,
            loaded=loaded,
            batch_size=args.batch_size,
            pictures=pictures,
        )
        if args.out and found["results"]:
            from cn_clip_pokemon.grids import save_grid

            cells = [
                (
                    pictures.picture(r["image_id"]),
                    [f"{r['rank']}. {r['name'] or r['image_id']}", f"~{r['score']:.3f}  id {r['image_id']}"]
                    + ([f"~{r['picture']}"] if r["picture"] else []),
                )
                for r in found["results"]
            ]
            save_grid(cells, args.out, title=f"{args.split}: {found['query']}")
            print(f"grid: {args.out}", file=sys.stderr)
        count = len(pictures.image_ids)
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=2))
    else:
        number = f" #{found['number']}" if found["number"] else ""
        print(f"{found['query']}{number}  ({args.split} split, {count} pictures)")
        for result in found["results"]:
            picture = f"  {result['picture']}" if result["picture"] else ""
            print(f"  {result['rank']:3d}. {result['score']:.4f}  {result['name'] or '?'}{picture}  (image {result['image_id']})")
    return 0
