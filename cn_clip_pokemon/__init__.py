"""cn-clip-pokemon: fine-tune Chinese-CLIP on your own pictures (a plugin for cn_clip.training)."""
__version__ = "0.1.0"

from cn_clip_pokemon.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)


def load_model(path_or_name, device=None, **kwargs):
    """Load any Chinese-CLIP checkpoint: returns ``(model, preprocess)``. See checkpoint.load_model."""
    from cn_clip_pokemon.checkpoint import load_model as _load_model

    return _load_model(path_or_name, device=device, **kwargs)


__all__ = ["__version__", "hookimpl", "load_model"]
