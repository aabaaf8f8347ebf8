import json
import re
from pathlib import Path

import pytest

from cn_clip_pokemon import cli, hookimpl, hookspecs, plugins

REPO = Path(__file__).resolve().parents[1]


class ThirdPartyDatasets:
    """A plugin as a third party would write it."""

    @hookimpl
    def register_datasets(self, register):
        register("my-cats", {"description": "pictures of cats"})


@pytest.fixture
def third_party():
    plugin = ThirdPartyDatasets()
    plugins.load_plugins()
    plugins.pm.register(plugin, name="third-party-test")
    try:
        yield plugin
    finally:
        plugins.pm.unregister(plugin)


def test_default_plugins_come_through_the_entry_point_group():
    plugins.load_plugins()
    names = {name for name, _ in plugins.pm.list_name_plugin()}
    assert set(plugins.DEFAULT_PLUGINS) <= names
    described = {p["name"]: p for p in plugins.describe_plugins()}
    # Installed with pip, the defaults are loaded from our distribution's entry points.
    assert described["pokemon"]["distribution"].startswith("cn-clip-pokemon")
    assert "pokemon" in plugins.get_datasets()
    assert {"local", "torchrun"} <= set(plugins.get_launchers())
    configs = plugins.get_model_configs()
    for name, path in configs.items():
        assert Path(path).is_file(), f"model config {name} points at a missing file {path}"


def test_third_party_dataset_is_registered_and_listed(third_party, capsys):
    assert plugins.get_datasets()["my-cats"] == {"description": "pictures of cats"}
    assert cli.main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["third-party-test"]["registers"] == {"register_datasets": ["my-cats"]}
    assert "register_launchers" in listed["launchers"]["hooks"]


def test_a_name_registered_twice_is_refused(third_party):
    class Clash:
        @hookimpl
        def register_datasets(self, register):
            register("my-cats", {})

    clash = Clash()
    plugins.pm.register(clash, name="clash-test")
    try:
        with pytest.raises(ValueError, match="my-cats.*registered twice"):
            plugins.get_datasets()
    finally:
        plugins.pm.unregister(clash)


def test_a_misspelt_hook_is_caught():
    class Misspelt:
        @hookimpl
        def register_dataset(self, register):  # missing "s"
            pass

    misspelt = Misspelt()
    plugins.pm.register(misspelt, name="misspelt-test")
    try:
        with pytest.raises(Exception, match="register_dataset"):
            plugins.pm.check_pending()
    finally:
        plugins.pm.unregister(misspelt)


@pytest.mark.parametrize("readme", ["README.md", "README_En.md"])
def test_every_hook_is_documented(readme):
    text = (REPO / readme).read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks, "no hook specs found"
    missing = [hook for hook in hooks if not re.search(rf"\b{hook}\b", text)]
    assert not missing, f"{readme} does not document the hooks {missing}"
