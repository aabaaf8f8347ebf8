"""Embeddings of texts, names and pictures: the one encoding path of classify, search, evaluate and serve.

Name embeddings depend only on the checkpoint's weights, the names, the prompt templates and the
context length, so they are computed once and kept in ``<checkpoint>.cache/`` beside the checkpoint
(keyed by the SHA-256 of the checkpoint file, remembered while its size and mtime stay the same); a
second call encodes only the pictures. A dataset split's picture embeddings are cached the same way,
keyed by the checkpoint and the split's picture file (``embedding_cache`` says where and how; a
split is read through ``dataset_split.SplitPictures``).

Every picture goes through the checkpoint's ``preprocess`` (``images.PicturePreprocess``: transparency
composited on white, padded to a square as the dataset builder stores pictures, then upstream's own
``image_transform``), the same one the Python API's ``load_model`` returns. Texts go through
upstream's ``_preprocess_text`` and ``tokenize`` with the model's context length (52 for upstream's
models), as in training.

With ``--views turns`` (``PicturePreprocess.views``) each picture is encoded as several views (turned,
smaller): zero-shot probabilities average the views' (:func:`zero_shot_probabilities`), rankings by
cosine use their weighted mean embedding (:func:`picture_vectors`); the same in every door.
"""
from cn_clip_pokemon import embedding_cache
from cn_clip_pokemon.dataset_format import fill_template
from cn_clip_pokemon.errors import UserError

DEFAULT_TEMPLATES = ("{}",)


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
    temperature), for normalized embeddings: the one zero-shot scoring of classify, evaluate and --perturb.
    Embeddings of several views a picture (``[pictures, views, dim]``, ``--views``): each view's softmax,
    averaged with the preprocess's ``view_weights``."""
    logit_scale = loaded.model.logit_scale.detach().float().exp().cpu()
    probabilities = (logit_scale * image_embeddings @ name_embeddings.T).softmax(dim=-1)
    return _over_views(loaded, probabilities) if probabilities.dim() == 3 else probabilities


def _over_views(loaded, values):
    """``values`` ``[pictures, views, k]`` summed over the views with the preprocess's ``view_weights``."""
    weights = loaded.preprocess.view_weights
    if len(weights) != values.shape[1]:
        raise ValueError(f"{values.shape[1]} views a picture, but the preprocess makes {len(weights)} ({loaded.preprocess.views!r})")
    return (values * weights[None, :, None]).sum(dim=1)


def picture_vectors(loaded, image_embeddings):
    """One normalized vector a picture, ``[pictures, dim]``, for ranking by cosine (search, retrieval):
    the embeddings as they are for one view a picture; for several (``--views``), their mean weighted
    by the preprocess's ``view_weights``, normalized again."""
    if image_embeddings.dim() != 3:
        return image_embeddings
    mean = _over_views(loaded, image_embeddings)
    return mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def encode_pictures(loaded, images, count=None, batch_size=32, progress=True, description="encoding pictures",
                    each_batch=None, lock=None, preprocess=None):
    """L2-normalized picture embeddings ``[n, embed_dim]`` for an iterable of PIL pictures; ``[n, views,
    embed_dim]`` when the preprocess shows the model several views of each (``--views``).

    ``preprocess``: ``loaded.preprocess`` unless given (a split's stored pictures, already framed
    like the checkpoint's, use its ``as_stored()``).

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
    preprocess = preprocess or loaded.preprocess
    views = getattr(preprocess, "view_count", 1)

    def flush():
        inputs = torch.stack(batch)
        with lock or contextlib.nullcontext(), torch.inference_mode():
            features = model.encode_image(inputs.flatten(0, 1).to(device) if views > 1 else inputs.to(device)).float()
        if views > 1:
            features = features.reshape(len(batch), views, -1)
        chunks.append(normalized_embeddings(loaded, features, "pictures"))
        done[0] += len(batch)
        batch.clear()
        if each_batch is not None:
            each_batch(done[0])

    batches = -(-count // batch_size) if count else None
    bar = _progress(None, batches, description, progress)
    for image in images:
        # the one PicturePreprocess every door uses (on white, framed as the checkpoint says, padded square,
        # upstream's transform); its as_stored() for a split's pictures the builder framed already
        batch.append(preprocess.views_of(image) if views > 1 else preprocess(image))
        if len(batch) == batch_size:
            flush()
            bar.update(1)
    if batch:
        flush()
        bar.update(1)
    bar.close()
    if not chunks:
        return torch.zeros(0, *([views] if views > 1 else []), loaded.model.text_projection.shape[1])
    return torch.cat(chunks)


def split_embeddings(loaded, pictures, cache=True, batch_size=32, progress=True, each_batch=None, lock=None):
    """Embeddings of every picture of a split, ``[len(pictures.image_ids), embed_dim]``, cached.

    ``each_batch`` and ``lock`` as for :func:`encode_pictures` (not called when the cache answers).
    """
    from cn_clip_pokemon.checkpoint_files import file_digest

    # pictures the builder already framed as the checkpoint frames them are not framed twice
    preprocess = loaded.preprocess.as_stored() if pictures.framing == loaded.framing else loaded.preprocess

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
            preprocess=preprocess,
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
        framing=preprocess.framing,
        # the picture alone keeps the key earlier releases wrote; several views are another entry
        **({} if preprocess.views == "one" else {"views": preprocess.views}),
    )
    path = cache_dir / f"pictures-{pictures.split}-{embedding_cache.cache_key(parts)}.pt"
    cached = embedding_cache.read_cache(path, parts)
    if cached is not None and cached["image_ids"].tolist() == pictures.image_ids:
        return cached["embeddings"]
    embeddings = compute()
    embedding_cache.write_cache(path, parts, embeddings=embeddings, image_ids=torch.tensor(pictures.image_ids, dtype=torch.long))
    return embeddings
