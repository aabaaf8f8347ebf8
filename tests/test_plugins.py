import contextlib
import json
import re
from pathlib import Path

import pytest

from cn_clip_pokemon import cli, hookimpl, hookspecs, plugins

REPO = Path(__file__).resolve().parents[1]


class CatPictures:
    description = "pictures of cats"

    def get_dataset(self, args, is_train, max_txt_length=64, epoch_id=0):
        raise NotImplementedError  # never trained in these tests


CATS = CatPictures()


class ThirdPartyDatasets:
    """A plugin as a third party would write it."""

    @hookimpl
    def register_datasets(self, register):
        register("my-cats", CATS)


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
    assert plugins.get_datasets()["my-cats"] is CATS
    assert cli.main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["third-party-test"]["registers"] == {"register_datasets": ["my-cats"]}
    assert "register_launchers" in listed["launchers"]["hooks"]


def test_a_name_registered_twice_is_refused(third_party):
    class Clash:
        @hookimpl
        def register_datasets(self, register):
            register("my-cats", CatPictures())

    clash = Clash()
    plugins.pm.register(clash, name="clash-test")
    try:
        with pytest.raises(plugins.PluginError, match="'my-cats' is registered twice, by plugin 'third-party-test'.*and by plugin 'clash-test'"):
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
        plugins._drop_invalid_plugins()  # what load_plugins does: that plugin only is skipped
        assert plugins.pm.get_plugin("misspelt-test") is None
        assert "misspelt" in plugins._broken["misspelt-test"]
        assert "pokemon" in plugins.get_datasets()
    finally:
        if plugins.pm.is_registered(misspelt):
            plugins.pm.unregister(misspelt)
        plugins._broken.pop("misspelt-test", None)


def test_a_plugin_may_not_take_upstreams_model_names():
    class Impostor:
        @hookimpl
        def register_model_configs(self, register):
            register("ViT-B-16", {"embed_dim": 8, "image_resolution": 32, "vision_layers": 1, "vision_width": 8, "vision_patch_size": 8})

    impostor = Impostor()
    plugins.pm.register(impostor, name="impostor-test")
    try:
        with pytest.raises(plugins.PluginError, match="'ViT-B-16' of plugin 'impostor-test'.*upstream's own model config"):
            plugins.get_model_configs()
    finally:
        plugins.pm.unregister(impostor)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"embed_dim": 8}, "neither a vision config"),
        (42, "is a int; give a path"),
        ("/no/such/file.json", "not a readable JSON file"),
    ],
)
def test_model_configs_are_paths_or_dicts_in_upstreams_format(config, message):
    with registered_model_config("ViT-Mine", config):
        with pytest.raises(plugins.PluginError, match=message):
            plugins.get_model_configs()


def test_a_model_config_may_be_a_dict():
    config = {"embed_dim": 8, "image_resolution": 32, "vision_layers": 1, "vision_width": 8, "vision_patch_size": 8}
    with registered_model_config("ViT-Dict-Test", config):
        assert plugins.get_model_configs()["ViT-Dict-Test"] == config


@contextlib.contextmanager
def registered_model_config(name, config):
    """A throwaway plugin registering one model config, unregistered afterwards."""

    class Configs:
        @hookimpl
        def register_model_configs(self, register):
            register(name, config)

    plugin = Configs()
    plugins.pm.register(plugin, name="model-config-test")
    try:
        yield
    finally:
        plugins.pm.unregister(plugin)


def fake_distribution(folder, dist_name, entry_points, modules):
    """An installed distribution as pip leaves it: NAME-1.0.dist-info with entry_points.txt, and its modules."""
    info = folder / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cn_clip.training]\n{lines}")
    for relative, text in modules.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run_cli(args, path, **env):
    import os
    import subprocess
    import sys

    environment = dict(os.environ, PYTHONPATH=f"{path}{os.pathsep}{REPO}", **env)
    environment.pop("CN_CLIP_POKEMON_PLUGINS", None) if "CN_CLIP_POKEMON_PLUGINS" not in env else None
    return subprocess.run([sys.executable, "-m", "cn_clip_pokemon", *args], capture_output=True, text=True, env=environment, timeout=120)


GOOD_PLUGIN = """
from cn_clip_pokemon import hookimpl

class Launcher:
    description = "prints its argv"
    def launch(self, options, argv):
        print("launched", argv)
        return 0

@hookimpl
def register_launchers(register):
    register("echo", Launcher())
"""


def test_installed_distributions_plugins_load_filter_and_break_cleanly(tmp_path):
    fake_distribution(tmp_path, "cn-clip-echo", {"echo": "cn_clip_echo"}, {"cn_clip_echo/__init__.py": GOOD_PLUGIN})
    fake_distribution(tmp_path, "cn-clip-broken", {"broken": "cn_clip_broken"}, {"cn_clip_broken/__init__.py": "import no_such_module\n"})
    fake_distribution(tmp_path, "cn-clip-echo-copy", {"echo2": "cn_clip_echo"}, {})  # the same module twice

    listed = run_cli(["plugins", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    described = {p["name"]: p for p in json.loads(listed.stdout)}
    # two distributions pointing at one module: the first loaded wins, the other is skipped
    loaded, copy = sorted(("echo", "echo2"), key=lambda name: "skipped" in described[name])
    assert described[loaded]["registers"] == {"register_launchers": ["echo"]}
    assert described[loaded]["distribution"] in ("cn-clip-echo 1.0", "cn-clip-echo-copy 1.0")
    assert f"same module 'cn_clip_echo' as plugin '{loaded}'" in described[copy]["skipped"]
    assert "No module named 'no_such_module'" in described["broken"]["skipped"]
    warnings = [line for line in listed.stderr.splitlines() if "warning" in line]
    assert any("plugin 'broken' (from cn-clip-broken 1.0) is skipped" in line and "CN_CLIP_POKEMON_PLUGINS=" in line for line in warnings)

    # only the plugins named load (the defaults always do); the broken one is then not imported
    only = run_cli(["plugins", "--json"], tmp_path, CN_CLIP_POKEMON_PLUGINS="echo")
    only_described = {p["name"]: p for p in json.loads(only.stdout)}
    assert only_described["echo"]["distribution"] == "cn-clip-echo 1.0"
    assert "broken" not in only_described and "echo2" not in only_described and "pokemon" in only_described
    assert only.stderr.strip() == ""
    none = run_cli(["plugins", "--json"], tmp_path, CN_CLIP_POKEMON_PLUGINS="")
    assert {p["name"] for p in json.loads(none.stdout)} == set(plugins.DEFAULT_PLUGINS)

    # the installed launcher is selectable by name through the real train command
    launched = run_cli(["train", "--launcher", "echo", "--dataset", "none", "--train-data", str(tmp_path / "nowhere")], tmp_path)
    assert launched.returncode == 1 and "is not a folder" in launched.stderr  # checked before launching


@pytest.mark.parametrize("readme", ["README.md", "README_En.md"])
def test_every_hook_is_documented(readme):
    text = (REPO / readme).read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks, "no hook specs found"
    missing = [hook for hook in hooks if not re.search(rf"\b{hook}\b", text)]
    assert not missing, f"{readme} does not document the hooks {missing}"
