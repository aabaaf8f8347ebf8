"""`cn-clip-pokemon evaluate`: zero-shot top-1/top-5 and Recall@1/5/10 of a checkpoint on a split.

What is measured, on the pictures of one split of a built dataset (CPU or GPU):

- **Zero-shot top-1 / top-5**: each picture is classified among the names ``classify`` ranks by
  default, the checkpoint's own captions (the names of the dataset it was trained on), together
  with the dataset's *full* name set (``dataset_info.json`` "names": every Pokemon of every split,
  not only those of this split), each name embedded through the dataset's prompt templates
  (averaged, as upstream's ``zero_shot_classifier`` does). Top-k is a hit when a right name is among
  the k most probable names; k really is 5 (upstream's ``zeroshot_evaluation.py`` computes
  ``topk=(1, 1)``). A group is one answer: a picture of any captions (``build-dataset --any-names``
  or ``--manifest``) is right under each of its own captions and each caption of its group (the
  builder's groups: captions sharing a picture, or tokenizing alike); the report says how many
  pictures had several right captions.
  Without ``dataset_info.json`` the names are the distinct texts of all splits, and a picture's
  label is any text paired with it.
- **Text -> image Recall@K**: every distinct text of the split (``{split}_texts.jsonl``) queries all
  pictures of the split. The query is a hit at K when *any* of its positives is among the K most
  similar pictures. Its positives are *all* the pictures listed in its ``image_ids`` (every picture
  of that Pokemon in the split), not one "diagonal" picture: another picture of the same Pokemon
  ranking first is a correct answer. Recall@K is the percentage of queries that hit.
- **Image -> text Recall@K**: every picture that has a text queries all texts of the split; its
  positives are all the texts whose ``image_ids`` contain it (several when the dataset uses several
  prompt templates). Same hit rule.

These are exactly the rules of upstream's ``cn_clip/eval/evaluation.py`` (t2i) and
``evaluation_tr.py`` (i2t) on the same top-10 predictions; ``--predictions DIR`` writes those
predictions and ground truths in upstream's jsonl format so its scripts can be run on them.
Rankings sort by similarity with ties kept in index order (a stable sort, like upstream's
``sorted``). All numbers are percentages, like upstream's.
"""
import json
import sys
from pathlib import Path

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, SPLITS, demo_pictures, texts_jsonl
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.zero_shot import ranked, top_k_accuracy, zero_shot_labels

RECALL_KS = (1, 5, 10)


def recall_at_k(top, positives, ks=RECALL_KS):
    """Percent of queries with any positive among their first k predictions, for each k.

    ``top`` is ``[queries, >=max(ks)]`` candidate indices, ``positives`` a list of sets of indices.
    """
    hits = {k: 0 for k in ks}
    for row, wanted in zip(top.tolist(), positives):
        for k in ks:
            if wanted.intersection(row[:k]):
                hits[k] += 1
    count = max(1, len(positives))
    scores = {f"r{k}": hits[k] * 100.0 / count for k in ks}
    scores["mean_recall"] = sum(scores[f"r{k}"] for k in ks) / len(ks)
    scores["queries"] = len(positives)
    return scores


def write_upstream_files(directory, split, texts, image_ids, t2i_top, i2t_top, i2t_image_ids, i2t_positives):
    """Ground truths and top-k predictions in upstream's jsonl formats (evaluation.py / evaluation_tr.py)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(texts_jsonl(directory, split), "w", encoding="utf-8") as f:
        for entry in texts:
            f.write(json.dumps({"text_id": entry["text_id"], "text": entry["text"], "image_ids": entry["image_ids"]}, ensure_ascii=False) + "\n")
    with open(directory / f"{split}_predictions.jsonl", "w", encoding="utf-8") as f:
        for entry, row in zip(texts, t2i_top.tolist()):
            f.write(json.dumps({"text_id": entry["text_id"], "image_ids": [image_ids[i] for i in row]}) + "\n")
    with open(directory / f"{split}_texts.tr.jsonl", "w", encoding="utf-8") as f:
        for image_id, wanted in zip(i2t_image_ids, i2t_positives):
            f.write(json.dumps({"image_id": image_id, "text_ids": [texts[i]["text_id"] for i in sorted(wanted)]}) + "\n")
    with open(directory / f"{split}_tr_predictions.jsonl", "w", encoding="utf-8") as f:
        for image_id, row in zip(i2t_image_ids, i2t_top.tolist()):
            f.write(json.dumps({"image_id": image_id, "text_ids": [texts[i]["text_id"] for i in row]}) + "\n")


def evaluate(
    checkpoint,
    dataset_dir,
    split=EVAL_SPLIT,
    device=None,
    batch_size=32,
    worst=16,
    out=None,
    predictions_dir=None,
    cache=True,
    progress=True,
    keep_scores=False,
    loaded=None,
    **load_options,
):
    """Evaluate ``checkpoint`` on ``dataset_dir``'s ``split``; the module docstring defines the numbers.

    Returns ``{"zero_shot": {"top1", "top5"}, "text_to_image": {"r1", "r5", "r10", "mean_recall",
    "queries"}, "image_to_text": {...}, "worst": [...], ...}``. ``out`` writes a PNG grid of the
    ``worst`` most confident mistakes; ``predictions_dir`` writes upstream's jsonl files;
    ``keep_scores`` adds the raw tensors under ``"scores"``. Each mistake names its picture by
    ``image_id`` and by ``picture``, the file it was built from (None without dataset_info.json).
    ``load_options`` (``vision_model``, ``text_model``) go to ``load_checkpoint``.
    """
    from cn_clip_pokemon.checkpoint import load_checkpoint
    from cn_clip_pokemon.dataset_split import SplitPictures
    from cn_clip_pokemon.encoding import name_embeddings, picture_vectors, require_positive, split_embeddings, zero_shot_probabilities

    require_positive(batch_size=batch_size)
    if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
        raise UserError(f"worst must be a whole number of at least 0, not {worst!r}")
    loaded = loaded or load_checkpoint(checkpoint, device=device, **load_options)
    pictures = SplitPictures(dataset_dir, split)
    try:
        if not pictures.image_ids:
            raise UserError(f"the {split} split of {dataset_dir} has no pictures")
        image_ids = pictures.image_ids
        image_embeddings = split_embeddings(loaded, pictures, cache=cache, batch_size=batch_size, progress=progress)

        # zero-shot classification over the full name set
        names, templates, labels = zero_shot_labels(pictures, dataset_dir, loaded.captions)
        several = sum(len(wanted) > 1 for wanted in labels)
        names_embedded = name_embeddings(loaded, names, templates, cache=cache, progress=progress)
        probabilities = zero_shot_probabilities(loaded, image_embeddings, names_embedded)
        zero_shot = top_k_accuracy(probabilities, labels)

        # retrieval within the split, every positive counted
        texts = pictures.texts
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        t2i_positives = []
        for entry in texts:
            missing = [i for i in entry["image_ids"] if i not in position]
            if missing:
                raise UserError(
                    f"{texts_jsonl(dataset_dir, split).name} of {dataset_dir} names pictures {missing[:5]} that the {split} "
                    "pictures do not have: rebuild the dataset"
                )
            t2i_positives.append({position[i] for i in entry["image_ids"]})
        if texts:
            text_embeddings = name_embeddings(loaded, [entry["text"] for entry in texts], ["{}"], cache=cache, progress=progress)
            similarity = text_embeddings @ picture_vectors(loaded, image_embeddings).T
            t2i_top = ranked(similarity, max(RECALL_KS))
            text_to_image = recall_at_k(t2i_top, t2i_positives)
            by_image = {}
            for text_index, wanted in enumerate(t2i_positives):
                for image_index in wanted:
                    by_image.setdefault(image_index, set()).add(text_index)
            i2t_rows = sorted(by_image)
            i2t_positives = [by_image[i] for i in i2t_rows]
            i2t_top = ranked(similarity.T[i2t_rows], max(RECALL_KS))
            image_to_text = recall_at_k(i2t_top, i2t_positives)
            if predictions_dir:
                write_upstream_files(
                    predictions_dir, split, texts, image_ids, t2i_top, i2t_top, [image_ids[i] for i in i2t_rows], i2t_positives
                )
        else:
            similarity = None
            text_to_image = image_to_text = None

        # the most confident mistakes, for the grid
        mistakes = []
        best = probabilities.argmax(dim=-1).tolist()
        for row, (predicted, wanted) in enumerate(zip(best, labels)):
            if predicted in wanted:
                continue
            truth = max(wanted, key=lambda i: float(probabilities[row, i])) if wanted else None
            p_truth = float(probabilities[row, truth]) if truth is not None else 0.0
            rank_of_truth = int((probabilities[row] > p_truth).sum()) + 1 if truth is not None else None
            mistakes.append(
                {
                    "image_id": image_ids[row],
                    "picture": pictures.source(image_ids[row]),
                    "truth": names[truth] if truth is not None else None,
                    "truth_probability": p_truth,
                    "truth_rank": rank_of_truth,
                    "predicted": names[predicted],
                    "predicted_probability": float(probabilities[row, predicted]),
                }
            )
        mistakes.sort(key=lambda m: m["predicted_probability"] - m["truth_probability"], reverse=True)
        mistakes = mistakes[:worst]
        if out:
            from cn_clip_pokemon.grids import save_grid

            if mistakes:
                cells = [
                    (
                        pictures.picture(m["image_id"]),
                        [
                            f"{m['predicted']} {m['predicted_probability'] * 100:.1f}%",
                            f"~is {m['truth']} {m['truth_probability'] * 100:.1f}% (rank {m['truth_rank']})",
                        ]
                        + ([f"~{m['picture']}"] if m["picture"] else []),
                    )
                    for m in mistakes
                ]
                save_grid(cells, out, title=f"{split}: {len(mistakes)} worst confusions (model's answer, then the truth)")
            else:
                print(f"cn-clip-pokemon: no confusions on the {split} split: {out} not written", file=sys.stderr)

        result = {
            "checkpoint": str(loaded.path),
            "dataset": str(dataset_dir),
            "split": split,
            "device": str(next(loaded.model.parameters()).device),
            "pictures": len(image_ids),
            "texts": len(texts),
            "names": len(names),
            # the checkpoint's own captions are the candidates (with the dataset's names it lacks)
            "names_from": "checkpoint" if loaded.captions else "dataset",
            "templates": templates,
            # pictures with several right captions (their own, or their group's): any of them is a hit
            "pictures_with_several_captions": several,
            "zero_shot": zero_shot,
            "text_to_image": text_to_image,
            "image_to_text": image_to_text,
            "worst": mistakes,
        }
        if keep_scores:
            result["scores"] = {
                "image_ids": image_ids,
                "names": names,
                "labels": labels,
                "probabilities": probabilities,
                "image_embeddings": image_embeddings,
                "text_image_similarity": similarity,
            }
        return result
    finally:
        pictures.close()


def evaluate_arguments(parser):
    from cn_clip_pokemon.arguments import non_negative_int, output_file, output_folder, positive_int
    from cn_clip_pokemon.model_options import add_model_options

    parser.description = (
        "Evaluate a checkpoint on a split of a built dataset: zero-shot top-1 and top-5 over the names "
        "classify ranks (the checkpoint's own captions) and the dataset's full name set, where any caption "
        "of a picture or of its group is a hit, and text->image / image->text Recall@1/5/10 where every "
        "picture of the right Pokemon counts as a hit (upstream's evaluation.py rules). Percentages."
    )
    add_model_options(parser)
    parser.add_argument("--dataset", required=True, metavar="DIR", help="a dataset folder made by `cn-clip-pokemon build-dataset`")
    parser.add_argument("--split", default=EVAL_SPLIT, choices=SPLITS, help="the split to evaluate (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--out", type=output_file, metavar="WORST.png", help="write a grid of the most confident zero-shot mistakes")
    parser.add_argument("--worst", type=non_negative_int, help="the most confident mistakes to list and draw (default 16; 0: none)")
    parser.add_argument(
        "--predictions",
        type=output_folder,
        metavar="DIR",
        help="write upstream's jsonl ground truths and top-10 predictions there, for cn_clip/eval/evaluation.py",
    )
    parser.add_argument(
        "--perturb",
        type=_perturbations,
        metavar="CHANGES",
        help="instead: one table of zero-shot top-1/top-5, clean and under each change of the original pictures "
        "(comma-separated, or all): jpeg30, half, quarter, blur, grey-bg, black-bg, photo-bg, crop80, rotate15, canvas",
    )
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="with --perturb: the picture folder the dataset was built from (default: DATASET/../../pictures, the demo's layout)",
    )
    parser.add_argument(
        "--sample",
        type=positive_int,
        metavar="N",
        help="with --perturb: only N pictures of the split, evenly spaced, the same every run (default: all; a busy "
        "background is cut away at about 0.1 s a picture, so photo-bg on 13,000 pictures takes about 25 minutes)",
    )


def _perturbations(text):
    import argparse

    from cn_clip_pokemon.perturb import parse_perturbations

    try:
        return parse_perturbations(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def evaluate_command(args):
    from cn_clip_pokemon.model_options import model_options

    from cn_clip_pokemon.arguments import UsageError

    if getattr(args, "perturb", None):
        from cn_clip_pokemon.perturb import evaluate_perturbed, print_table

        given = [flag for flag, value in (("--out", args.out), ("--worst", args.worst), ("--predictions", args.predictions))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} cannot go with --perturb, which prints only its table (see `cn-clip-pokemon evaluate --help`)")
        images = Path(args.images) if args.images else demo_pictures(args.dataset)
        result = evaluate_perturbed(args.checkpoint, args.dataset, images, args.perturb, split=args.split, device=args.device,
                                    batch_size=args.batch_size, cache=not args.no_cache, sample=args.sample,
                                    **model_options(args))
        print(json.dumps(result, ensure_ascii=False, indent=2)) if args.json else print_table(result)
        return 0
    if args.sample is not None:
        raise UsageError("--sample goes with --perturb: evaluate measures every picture of the split (see `cn-clip-pokemon evaluate --help`)")
    if args.images is not None:
        raise UsageError("--images goes with --perturb: evaluate reads the dataset's own pictures (see `cn-clip-pokemon evaluate --help`)")
    result = evaluate(
        args.checkpoint,
        args.dataset,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
        worst=16 if args.worst is None else args.worst,
        out=args.out,
        predictions_dir=args.predictions,
        cache=not args.no_cache,
        **model_options(args),
    )
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    print(
        f"{result['checkpoint']} on {result['dataset']} ({result['split']}: {result['pictures']} pictures, "
        f"{result['texts']} texts, {result['names']} names, device {result['device']})"
    )
    zero_shot = result["zero_shot"]
    print(f"  zero-shot      top-1 {zero_shot['top1']:6.2f}   top-5 {zero_shot['top5']:6.2f}")
    if result["pictures_with_several_captions"]:
        print(
            f"                 {result['pictures_with_several_captions']} of {result['pictures']} pictures have several "
            "right captions (their own or their group's): any of them counts as a hit"
        )
    for label, key in (("text->image", "text_to_image"), ("image->text", "image_to_text")):
        scores = result[key]
        if scores:
            print(
                f"  {label:13}  R@1 {scores['r1']:6.2f}   R@5 {scores['r5']:6.2f}   R@10 {scores['r10']:6.2f}   "
                f"mean {scores['mean_recall']:6.2f}   ({scores['queries']} queries)"
            )
    if result["worst"]:
        print("  most confident mistakes:")
        for m in result["worst"]:
            picture = f"{m['picture']} (picture {m['image_id']})" if m["picture"] else f"picture {m['image_id']}"
            print(
                f"    {picture}: said {m['predicted']} ({m['predicted_probability'] * 100:.1f}%), "
                f"is {m['truth']} ({m['truth_probability'] * 100:.1f}%, rank {m['truth_rank']})"
            )
    if args.out and result["worst"]:
        print(f"grid: {args.out}", file=sys.stderr)
    return 0
