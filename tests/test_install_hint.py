"""Errors that name an optional extra say the pip command that fits how this copy was installed."""
import json
from importlib import metadata
from pathlib import Path

from cn_clip_pokemon.errors import install_hint

REPO = Path(__file__).resolve().parents[1]


def _installed_editable_from():
    for distribution in metadata.distributions(name="cn-clip-pokemon"):
        info = json.loads(distribution.read_text("direct_url.json") or "{}")
        if info:
            return info.get("url") if info.get("dir_info", {}).get("editable") else None
    return None


def test_the_hint_matches_the_readme_install():
    url = _installed_editable_from()
    if url is None:
        # an installed wheel or sdist: the PyPI name
        assert install_hint("web") == "pip install 'cn-clip-pokemon[web]'"
        return
    # a clone installed as the README says (`pip install -e .`): the same command, with the clone's path
    assert install_hint("web") == f"pip install -e '{REPO}[web]'"
    for readme in ("README.md", "README_En.md"):
        assert "pip install -e '.[web]'" in (REPO / readme).read_text(encoding="utf-8")


def test_the_missing_gradio_error_uses_it(monkeypatch):
    import builtins

    import pytest

    from cn_clip_pokemon.errors import UserError
    from cn_clip_pokemon.serve import require_gradio

    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(UserError) as error:
        require_gradio()
    assert install_hint("web") in str(error.value)
