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


class FakeDistribution:
    """What importlib.metadata.distributions yields, holding only a direct_url.json (or none)."""

    def __init__(self, direct_url):
        self.direct_url = direct_url

    def read_text(self, name):
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


def _with_distributions(monkeypatch, *found):
    asked = []

    def distributions(**options):
        asked.append(options)
        return iter(found)

    monkeypatch.setattr(metadata, "distributions", distributions)
    return asked


def test_an_editable_clone_gets_its_path(monkeypatch):
    clone = "/home/me/My Clones/cn-clip-pokemon"
    editable = FakeDistribution({"url": "file:///home/me/My%20Clones/cn-clip-pokemon", "dir_info": {"editable": True}})
    # an egg-info folder in the working directory comes first, without a direct_url.json
    asked = _with_distributions(monkeypatch, FakeDistribution(None), editable)
    assert install_hint("hf") == f"pip install -e '{clone}[hf]'"
    assert asked == [{"name": "cn-clip-pokemon"}]


def test_a_wheel_or_a_plain_directory_install_gets_the_package_name(monkeypatch):
    wheel = FakeDistribution({"url": "https://example.org/cn_clip_pokemon-0.1.0-py3-none-any.whl",
                              "archive_info": {"hash": "sha256=00"}})
    _with_distributions(monkeypatch, wheel)
    assert install_hint("web") == "pip install 'cn-clip-pokemon[web]'"
    not_editable = FakeDistribution({"url": "file:///home/me/cn-clip-pokemon", "dir_info": {}})
    _with_distributions(monkeypatch, not_editable)
    assert install_hint("svg") == "pip install 'cn-clip-pokemon[svg]'"
    _with_distributions(monkeypatch)  # not installed at all (run from a source tree)
    assert install_hint("hf") == "pip install 'cn-clip-pokemon[hf]'"
