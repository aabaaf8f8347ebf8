"""Tiny model configs, so the whole path trains from random initialisation on a CPU in minutes.

Every JSON file in ``cn_clip_pokemon/model_configs/`` is registered under its file name without
``.json``, in upstream's format: a vision file holds ``embed_dim``, ``image_resolution`` and the
``vision_*`` keys, a text file the ``text_*`` keys and ``vocab_size`` (21128: cn_clip's tokenizer
is fixed, so a smaller vocabulary would index out of range).
"""
from pathlib import Path

from cn_clip_pokemon.hookspecs import hookimpl

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"


@hookimpl
def register_model_configs(register):
    for path in sorted(MODEL_CONFIG_DIR.glob("*.json")):
        register(path.stem, str(path))
