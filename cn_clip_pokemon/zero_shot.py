"""Zero-shot classification of a dataset split: the names a picture is ranked among, which of them
are right for each picture, and top-k accuracy (the numbers of `evaluate` and `evaluate --perturb`).

The names are what ``classify`` ranks by default, the checkpoint's own captions, together with the
dataset's full name set; a picture is right under any caption of its own or of its group. Rankings
sort by score with ties kept in index order (a stable sort, like upstream's ``sorted``).
"""
from cn_clip_pokemon.dataset_format import SPLITS, check_templates, info_path, texts_jsonl
from cn_clip_pokemon.errors import UserError


def _all_split_texts(dataset_dir):
    """Distinct texts of every split's ``{split}_texts.jsonl``, in first-seen order."""
    from cn_clip_pokemon.dataset_split import read_split_texts

    seen, texts = set(), []
    for split in SPLITS:
        for entry in read_split_texts(texts_jsonl(dataset_dir, split)):  # each line checked
            if entry["text"] not in seen:
                seen.add(entry["text"])
                texts.append(entry["text"])
    return texts


def zero_shot_labels(pictures, dataset_dir, captions=None):
    """``(names, templates, labels)``: labels[i] is the set of name indices right for picture i.

    A picture is right under any of its own captions and any caption of its group (the pictures
    sharing a ``number`` in dataset_info.json: one Pokemon, or captions the builder grouped because
    they share a picture or tokenize alike): the builder treats a group as one answer, so does this.
    ``captions`` (the checkpoint's own, :attr:`LoadedCheckpoint.captions`) come first in ``names``,
    then the dataset's names they lack, so a picture ranks among what ``classify`` ranks by default.
    """
    info = pictures.info
    if info and info.get("names"):
        names = list(dict.fromkeys(list(captions or []) + list(info["names"])))
        # the dataset's own templates, held to the builder's rule (a hand-edited info file too)
        templates = check_templates(info.get("templates"))
        index = {name: i for i, name in enumerate(names)}
        images = info.get("images", {})

        def own_captions(entry):
            # a picture of any captions (--any-names, --manifest) is right under each of its captions
            return (entry.get("captions") or [entry.get("name")]) if isinstance(entry, dict) else [None]

        group_captions = {}
        for entry in images.values():
            if isinstance(entry, dict) and entry.get("number") is not None:
                group_captions.setdefault(entry["number"], set()).update(
                    name for name in own_captions(entry) if isinstance(name, str) and name in index
                )
        labels = []
        for image_id in pictures.image_ids:
            entry = images.get(str(image_id))
            wanted = own_captions(entry)
            if not all(isinstance(name, str) and name in index for name in wanted):
                raise UserError(
                    f"{info_path(dataset_dir)} has no name for picture {image_id} of the "
                    f"{pictures.split} split (or the name is not in its 'names'): rebuild the dataset"
                )
            right = {index[name] for name in wanted}
            right.update(index[name] for name in group_captions.get(entry.get("number"), ()))
            labels.append(right)
        return names, templates, labels
    names = list(dict.fromkeys(list(captions or []) + _all_split_texts(dataset_dir)))
    index = {name: i for i, name in enumerate(names)}
    labels = {image_id: set() for image_id in pictures.image_ids}
    for entry in pictures.texts:
        for image_id in entry["image_ids"]:
            if image_id in labels:
                labels[image_id].add(index[entry["text"]])
    return names, ["{}"], [labels[image_id] for image_id in pictures.image_ids]


def ranked(similarity, k):
    """Indices of the ``k`` highest scores per row, best first, ties in index order (stable)."""
    import torch

    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, similarity.shape[1])]


def top_k_accuracy(probabilities, labels, ks=(1, 5)):
    """Percent of pictures whose label is among the k most probable names, for each k."""
    top = ranked(probabilities, max(ks)).tolist()
    count = max(1, len(labels))
    return {f"top{k}": sum(bool(wanted.intersection(row[:k])) for row, wanted in zip(top, labels)) * 100.0 / count for k in ks}
