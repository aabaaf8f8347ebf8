"""`cn-clip-pokemon search`: a built dataset's pictures best matching a text or a picture.

A split's picture embeddings are encoded once and cached beside the checkpoint (``encoding``); a
text that is any name of a Pokemon is searched as its official name.
"""
import json
import sys

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, SPLITS
from cn_clip_pokemon.encoding import encode_pictures, encode_texts, fill_templates, picture_vectors, require_positive, split_embeddings
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.model_options import add_model_options, model_options


def search(
    checkpoint,
    dataset_dir,
    query=None,
    image=None,
    split=EVAL_SPLIT,
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
    embeddings, already computed (:func:`split_embeddings`, or their :func:`picture_vectors`), so they are not
    read again.
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
            from cn_clip_pokemon.images import read_picture

            probe = picture_vectors(loaded, encode_pictures(loaded, [read_picture(image)], progress=False))
        scores = (probe @ picture_vectors(loaded, embeddings).T)[0]
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
    parser.add_argument("--split", default=EVAL_SPLIT, choices=SPLITS, help=f"{', '.join(SPLITS[:-1])} or {SPLITS[-1]} (default {EVAL_SPLIT})")
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
