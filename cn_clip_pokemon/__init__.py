"""cn-clip-pokemon: fine-tune Chinese-CLIP on your own pictures (a plugin for cn_clip.training)."""
from cn_clip_pokemon.version import __version__  # noqa: F401
from cn_clip_pokemon.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)
from cn_clip_pokemon.batching import unique_text_batches  # noqa: E402  (for plugin authors' get_dataset)


def _install_patches():
    """patches/ apply to every cn_clip module imported after this package (a meta-path hook, ~30 ms).

    So upstream's own tools (load_from_name, eval, deploy) see the fixed model code and plugin
    configs too, and an installed flash-attn 2 never breaks a model build. A patch that does not
    apply is reported by the commands that need cn_clip, which call ``patching.install()`` again.
    """
    from cn_clip_pokemon import patching

    try:
        patching.install()
    except patching.PatchError:
        pass


_install_patches()


def load_model(path_or_name, device=None, **kwargs):
    """Load any Chinese-CLIP checkpoint: returns ``(model, preprocess)``. See checkpoint.load_model.

    ``preprocess`` is :class:`cn_clip_pokemon.images.PicturePreprocess`: ``preprocess(picture)`` takes
    a path or a PIL image of any mode (RGBA, LA, P with transparency, 16-bit, CMYK) and gives the
    model's input tensor exactly as ``classify`` and the dataset builder see the picture: transparent
    pixels composited on white, padded to a square on white, then upstream's ``image_transform``.
    :func:`load_checkpoint` returns the same with the checkpoint's ``captions`` (the names it was
    trained on).
    """
    from cn_clip_pokemon.checkpoint import load_model as _load_model

    return _load_model(path_or_name, device=device, **kwargs)


def load_checkpoint(path_or_name, device=None, **kwargs):
    """Like :func:`load_model`, but returns a ``LoadedCheckpoint``: ``.model``, ``.preprocess`` (the
    same PicturePreprocess), ``.captions`` (the candidate captions it was trained on, or None),
    ``.context_length`` (for ``cn_clip.clip.tokenize``), ``.model_config`` and ``.path``."""
    from cn_clip_pokemon.checkpoint import load_checkpoint as _load_checkpoint

    return _load_checkpoint(path_or_name, device=device, **kwargs)


__all__ = ["__version__", "hookimpl", "load_checkpoint", "load_model", "unique_text_batches"]
