"""Plugins add, never break: built-in names win, a plugin is loaded whole or skipped whole, every skip is
one warning line and shows in `cn-clip-pokemon plugins` (exit 1), and a plugin that raises costs one line.

In-process tests register throwaway plugin classes and unregister them in `finally`; the tests
through the real commands install fake distributions (NAME-1.0.dist-info with entry points) in a
folder on PYTHONPATH, as pip would, and run `python -m cn_clip_pokemon`.
"""
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from cn_clip_pokemon import cli, hookimpl, hookspecs, plugins
from cn_clip_pokemon.default_plugins.launchers import LocalLauncher
from cn_clip_pokemon.default_plugins.pokemon_dataset import pokemon_dataset
from conftest import registered, registered_model_config

REPO = Path(__file__).resolve().parents[1]

# Small enough that a training step takes milliseconds: 32 px pictures, 16 tokens.
VISION = {"embed_dim": 32, "image_resolution": 32, "vision_layers": 1, "vision_width": 64, "vision_patch_size": 8}
TEXT = {
    "vocab_size": 21128, "text_attention_probs_dropout_prob": 0.0, "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.0, "text_hidden_size": 32, "text_initializer_range": 0.02,
    "text_intermediate_size": 64, "text_max_position_embeddings": 16, "text_num_attention_heads": 2,
    "text_num_hidden_layers": 1, "text_type_vocab_size": 2,
}


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
    with registered(ThirdPartyDatasets(), "third-party-test") as plugin:
        yield plugin


def plugins_json(capsys):
    """`cn-clip-pokemon plugins --json`, in-process: (exit code, plugin name -> entry, stderr lines)."""
    code = cli.main(["plugins", "--json"])
    captured = capsys.readouterr()
    return code, {p["name"]: p for p in json.loads(captured.out)}, captured.err.splitlines()


def test_default_plugins_come_through_the_entry_point_group():
    plugins.load_plugins()
    names = {name for name, _ in plugins.pm.list_name_plugin()}
    assert set(plugins.DEFAULT_PLUGINS) <= names
    described = {p["name"]: p for p in plugins.describe_plugins()}
    # Installed with pip, the defaults are declared in our distribution's entry points (setup.py).
    assert described["pokemon"]["distribution"].startswith("cn-clip-pokemon")
    declared = {ep.name: ep for ep in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP) if ep.name in plugins.DEFAULT_PLUGINS}
    assert {name: ep.value for name, ep in declared.items()} == plugins.DEFAULT_PLUGINS
    assert {ep.dist.metadata["Name"] for ep in declared.values()} == {plugins.OWN_DISTRIBUTION}
    assert "pokemon" in plugins.get_datasets()
    assert {"local", "torchrun"} <= set(plugins.get_launchers())
    configs = plugins.get_model_configs()
    for name, path in configs.items():
        assert Path(path).is_file(), f"model config {name} points at a missing file {path}"


def test_third_party_dataset_is_registered_and_listed(third_party, capsys):
    assert plugins.get_datasets()["my-cats"] is CATS
    code, listed, warnings = plugins_json(capsys)
    assert code == 0 and warnings == []
    assert listed["third-party-test"]["registers"] == {"register_datasets": ["my-cats"]}
    assert "skipped_registrations" not in listed["third-party-test"]
    assert "register_launchers" in listed["launchers"]["hooks"]


def test_a_name_two_plugins_register_stays_with_the_first_and_the_second_loads_the_rest(third_party, capsys):
    class Clash:
        @hookimpl
        def register_datasets(self, register):
            register("my-cats", CatPictures())
            register("my-dogs", CatPictures())

    with registered(Clash(), "clash-test"):
        datasets = plugins.get_datasets()
        assert datasets["my-cats"] is CATS  # the first registered keeps it
        assert "my-dogs" in datasets  # the rest of the second plugin counts
        code, listed, warnings = plugins_json(capsys)
    assert code == 1
    assert listed["clash-test"]["registers"] == {"register_datasets": ["my-dogs"]}
    [skip] = listed["clash-test"]["skipped_registrations"]
    assert (skip["kind"], skip["name"]) == ("dataset", "my-cats")
    assert "plugin 'third-party-test'" in skip["skipped"] and "CN_CLIP_POKEMON_PLUGINS=" in skip["skipped"]
    [warning] = [line for line in warnings if "warning" in line]
    assert "dataset 'my-cats' of plugin 'clash-test'" in warning and "plugin 'third-party-test'" in warning


class Greedy:
    """Takes every built-in name it can, and offers one thing of its own."""

    @hookimpl
    def register_datasets(self, register):
        register("pokemon", CatPictures())
        register("None", CatPictures())  # `train --dataset none` means upstream's sampler
        register("greedy-cats", CATS)

    @hookimpl
    def register_launchers(self, register):
        register("local", LocalLauncher())
        register("auto", LocalLauncher())

    @hookimpl
    def register_model_configs(self, register):
        register("ViT-B-16", VISION)  # upstream's own
        register("ViT-B/16", VISION)  # the same, as upstream spells it in a name
        register("ViT-T-8-64", VISION)  # cn-clip-pokemon's own
        register("ViT-Greedy-32", VISION)


def test_built_in_names_win_and_the_rest_of_the_plugin_loads(capsys):
    from cn_clip_pokemon.model_config_resolver import model_config_path, upstream_config_dir

    with registered(Greedy(), "greedy-test"):
        datasets, launchers, configs = plugins.get_datasets(), plugins.get_launchers(), plugins.get_model_configs()
        assert datasets["pokemon"] is pokemon_dataset and datasets["greedy-cats"] is CATS and "None" not in datasets
        assert launchers["local"] is not None and launchers.plugin_of["local"] == "launchers" and "auto" not in launchers
        assert "ViT-B-16" not in configs and "ViT-B/16" not in configs and configs["ViT-Greedy-32"] == VISION
        assert model_config_path("ViT-B-16") == upstream_config_dir() / "ViT-B-16.json"
        assert configs.plugin_of["ViT-T-8-64"] == "tiny_models"
        code, listed, warnings = plugins_json(capsys)
        assert cli.main(["plugins"]) == 1
        text = capsys.readouterr().out
    assert code == 1
    skipped = {(s["kind"], s["name"]): s["skipped"] for s in listed["greedy-test"]["skipped_registrations"]}
    assert set(skipped) == {
        ("dataset", "pokemon"), ("dataset", "None"), ("launcher", "local"), ("launcher", "auto"),
        ("model config", "ViT-B-16"), ("model config", "ViT-B/16"), ("model config", "ViT-T-8-64"),
    }
    assert "cn-clip-pokemon's own dataset (plugin 'pokemon', cn-clip-pokemon " in skipped[("dataset", "pokemon")]
    assert "upstream's own model config (cn_clip 1.6.0)" in skipped[("model config", "ViT-B-16")]
    assert "`train --launcher auto`" in skipped[("launcher", "auto")]
    assert listed["greedy-test"]["registers"] == {
        "register_datasets": ["greedy-cats"], "register_launchers": [], "register_model_configs": ["ViT-Greedy-32"],
    }
    assert "  SKIPPED dataset pokemon: 'pokemon' is cn-clip-pokemon's own dataset" in text
    # one line per skip, each naming both sides and the way out
    assert len(warnings) == len(skipped)
    assert all("plugin 'greedy-test'" in line and "CN_CLIP_POKEMON_PLUGINS=" in line for line in warnings)


def test_model_config_names_clash_as_the_resolver_spells_them(capsys):
    from cn_clip_pokemon.model_config_resolver import model_config_path

    def configs_plugin(*names):
        hooks = {"register_model_configs": hookimpl(lambda self, register: [register(n, VISION) for n in names])}
        return type("Configs", (), hooks)()

    # 'ViT/X-1' is the config 'ViT-X-1' to the resolver: the second plugin's is skipped, not kept silently;
    # 'vit-b-16' is not upstream's 'ViT-B-16' to the case-sensitive resolver, so it is a plugin's own
    with registered(configs_plugin("ViT-X-1", "vit-b-16"), "configs-a-test"):
        with registered(configs_plugin("ViT/X-1"), "configs-b-test"):
            configs = plugins.get_model_configs()
            assert configs.plugin_of["ViT-X-1"] == "configs-a-test" and "ViT/X-1" not in configs
            assert configs.plugin_of["vit-b-16"] == "configs-a-test"
            assert model_config_path("ViT/X-1") == model_config_path("ViT-X-1")
            code, listed, warnings = plugins_json(capsys)
    assert code == 1
    [skip] = listed["configs-b-test"]["skipped_registrations"]
    assert (skip["kind"], skip["name"]) == ("model config", "ViT/X-1")
    assert "plugin 'configs-a-test' (registered in-process) registered it first" in skip["skipped"]
    assert "skipped_registrations" not in listed["configs-a-test"]


def test_a_plugin_whose_hook_raises_is_skipped_whole(capsys):
    from cn_clip_pokemon.model_config_resolver import UnknownModelConfig, model_config_path

    class HalfBroken:
        @hookimpl
        def register_model_configs(self, register):
            register("ViT-Half-32", VISION)

        @hookimpl
        def register_datasets(self, register):
            raise RuntimeError("no cats today")

    with registered(HalfBroken(), "half-test"):
        assert "ViT-Half-32" not in plugins.get_model_configs()
        with pytest.raises(UnknownModelConfig, match="unknown model config 'ViT-Half-32'"):
            model_config_path("ViT-Half-32")
        code, listed, warnings = plugins_json(capsys)
    assert code == 1
    assert listed["half-test"]["skipped"] == "its register_datasets hook raised RuntimeError: no cats today"
    assert "registers" not in listed["half-test"]
    [warning] = warnings
    assert "plugin 'half-test' (from registered in-process) is skipped, none of what it registers counts" in warning


def test_hooks_are_called_once_however_often_plugins_are_asked(capsys):
    calls = []

    class Counted:
        @hookimpl
        def register_datasets(self, register):
            calls.append("datasets")
            register("counted-cats", CATS)

        @hookimpl
        def register_model_configs(self, register):
            calls.append("model configs")
            register("ViT-Counted-32", VISION)

    with registered(Counted(), "counted-test"):
        for _ in range(3):
            plugins.get_datasets(), plugins.get_launchers(), plugins.get_model_configs()
        assert cli.main(["plugins"]) == 0
    assert sorted(calls) == ["datasets", "model configs"]


class NoGetDataset:
    description = "has no get_dataset"


@pytest.mark.parametrize(
    "hook, name, thing, message",
    [
        ("register_datasets", "dataset-test", NoGetDataset(), "has no get_dataset"),
        ("register_launchers", "launcher-test", object(), "has no launch(options, argv)"),
        ("register_model_configs", "ViT-Mine", {"embed_dim": 8}, "neither a vision config"),
        ("register_model_configs", "ViT-Mine", 42, "is a int; give a path"),
        ("register_model_configs", "ViT-Mine", "/no/such/file.json", "not a readable JSON file"),
        ("register_datasets", "", CATS, "must be a non-empty string"),
        ("register_datasets", " cats", CATS, "without surrounding spaces"),
        ("register_datasets", "twice", CATS, "registers the dataset 'twice' twice"),
    ],
)
def test_an_invalid_registration_skips_the_whole_plugin(hook, name, thing, message, capsys):
    def offer(register):
        if hook == "register_model_configs":
            register("ViT-Valid-Test", VISION)  # valid, and still not counted
        register(name, thing)
        if name == "twice":
            register(name, thing)

    hooks = {"register_model_configs": lambda self, register: register("ViT-Valid-Test", VISION)}
    hooks[hook] = lambda self, register: offer(register)
    Invalid = type("Invalid", (), {hook_name: hookimpl(function) for hook_name, function in hooks.items()})
    with registered(Invalid(), "invalid-test"):
        assert "ViT-Valid-Test" not in plugins.get_model_configs()
        code, listed, _ = plugins_json(capsys)
    assert code == 1
    assert message in listed["invalid-test"]["skipped"]


def test_a_model_config_may_be_a_dict():
    config = {"embed_dim": 8, "image_resolution": 32, "vision_layers": 1, "vision_width": 8, "vision_patch_size": 8}
    with registered_model_config("ViT-Dict-Test", config):
        assert plugins.get_model_configs()["ViT-Dict-Test"] == config


def test_a_misspelt_hook_is_caught(capsys):
    class Misspelt:
        @hookimpl
        def register_dataset(self, register):  # missing "s"
            pass

    misspelt = Misspelt()
    plugins.pm.register(misspelt, name="misspelt-test")
    try:
        with pytest.raises(Exception, match="register_dataset"):
            plugins.pm.check_pending()
        assert "pokemon" in plugins.get_datasets()  # deciding skips that plugin only
        assert plugins.pm.get_plugin("misspelt-test") is None
        code, listed, _ = plugins_json(capsys)
        assert code == 1 and "misspelt hook name" in listed["misspelt-test"]["skipped"]
    finally:
        if plugins.pm.is_registered(misspelt):
            plugins.pm.unregister(misspelt)
        plugins._misspelt.pop("misspelt-test", None)


# --------------------------------------------------------------------------- through the real commands


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


def run_cli(args, path, timeout=240, **env):
    environment = dict(os.environ, PYTHONPATH=f"{path}{os.pathsep}{REPO}", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **env)
    if "CN_CLIP_POKEMON_PLUGINS" not in env:
        environment.pop("CN_CLIP_POKEMON_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "cn_clip_pokemon", *args], capture_output=True, text=True, env=environment, timeout=timeout)


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
    fake_distribution(tmp_path, "cn-clip-exits", {"exits": "cn_clip_exits"}, {"cn_clip_exits/__init__.py": "raise SystemExit(3)\n"})
    # an entry point named like one of ours: ours keeps the name, theirs is never imported
    fake_distribution(tmp_path, "cn-clip-impostor", {"pokemon": "cn_clip_impostor"}, {"cn_clip_impostor/__init__.py": "raise SystemExit(3)\n"})

    listed = run_cli(["plugins", "--json"], tmp_path)
    assert listed.returncode == 1, listed.stderr  # something was skipped
    assert "Traceback" not in listed.stderr
    described = json.loads(listed.stdout)
    by_name = {p["name"]: p for p in described if "skipped" not in p}
    skipped = {(p["name"], p["distribution"]): p["skipped"] for p in described if "skipped" in p}
    # two distributions pointing at one module: the first loaded (entry points sorted by name) wins
    assert by_name["echo"]["registers"] == {"register_launchers": ["echo"]}
    assert by_name["echo"]["distribution"] == "cn-clip-echo 1.0"
    assert "same module 'cn_clip_echo' as plugin 'echo' (cn-clip-echo 1.0)" in skipped[("echo2", "cn-clip-echo-copy 1.0")]
    assert "No module named 'no_such_module'" in skipped[("broken", "cn-clip-broken 1.0")]
    assert "importing cn_clip_exits failed (SystemExit: 3)" in skipped[("exits", "cn-clip-exits 1.0")]
    assert by_name["pokemon"]["distribution"].startswith("cn-clip-pokemon ")
    assert "the plugin name 'pokemon' is taken by plugin 'pokemon' (cn-clip-pokemon" in skipped[("pokemon", "cn-clip-impostor 1.0")]
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 4 and all(line.startswith("cn-clip-pokemon: warning: ") for line in warnings)
    assert any("plugin 'broken' (from cn-clip-broken 1.0) is skipped" in line and "CN_CLIP_POKEMON_PLUGINS=echo " in line for line in warnings)

    # only the plugins named load (the defaults always do); the broken one is then not imported
    only = run_cli(["plugins", "--json"], tmp_path, CN_CLIP_POKEMON_PLUGINS="echo")
    assert only.returncode == 0 and only.stderr.strip() == ""
    only_described = {p["name"]: p for p in json.loads(only.stdout)}
    assert only_described["echo"]["distribution"] == "cn-clip-echo 1.0"
    assert "broken" not in only_described and "echo2" not in only_described and "pokemon" in only_described
    none = run_cli(["plugins", "--json"], tmp_path, CN_CLIP_POKEMON_PLUGINS="")
    assert {p["name"] for p in json.loads(none.stdout)} == set(plugins.DEFAULT_PLUGINS)

    # the installed launcher is selectable by name through the real train command
    launched = run_cli(["train", "--launcher", "echo", "--dataset", "none", "--train-data", str(tmp_path / "nowhere")], tmp_path, CN_CLIP_POKEMON_PLUGINS="echo")
    assert launched.returncode == 1 and "is not a folder" in launched.stderr  # checked before launching


PLUGIN_HEAD = f"""
from cn_clip_pokemon import hookimpl

VISION = {VISION!r}
TEXT = {TEXT!r}

class Refuses:
    needs_train_data = False
    def get_dataset(self, args, is_train, max_txt_length=64, epoch_id=0):
        raise RuntimeError("the drawing machine is out of ink")
    def launch(self, options, argv):
        raise RuntimeError("the cluster is closed")
"""

GREEDY = PLUGIN_HEAD + """
@hookimpl
def register_datasets(register):
    register("pokemon", Refuses())
    register("cats", Refuses())

@hookimpl
def register_launchers(register):
    register("local", Refuses())

@hookimpl
def register_model_configs(register):
    register("ViT-B-16", VISION)
    register("ViT-Greedy-32", VISION)
    register("RBT-Greedy", TEXT)
"""

SECOND = PLUGIN_HEAD + """
@hookimpl
def register_datasets(register):
    register("cats", Refuses())
"""

HALF = PLUGIN_HEAD + """
@hookimpl
def register_model_configs(register):
    register("ViT-Half-32", VISION)

@hookimpl
def register_datasets(register):
    raise RuntimeError("no cats today")
"""

FAULTY = PLUGIN_HEAD + """
class Hollow:
    needs_train_data = False
    def get_dataset(self, args, is_train, max_txt_length=64, epoch_id=0):
        return None

@hookimpl
def register_datasets(register):
    register("boom", Refuses())
    register("hollow", Hollow())

@hookimpl
def register_launchers(register):
    register("crash", Refuses())

@hookimpl
def register_model_configs(register):
    register("ViT-Faulty-32", VISION)
    register("RBT-Faulty", TEXT)
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A site folder with four installed plugin distributions."""
    site = tmp_path_factory.mktemp("site")
    for name, text in (("greedy", GREEDY), ("second", SECOND), ("half", HALF), ("faulty", FAULTY)):
        fake_distribution(site, f"cn-clip-{name}", {name: f"cn_clip_{name}"}, {f"cn_clip_{name}/__init__.py": text})
    return site


def test_plugins_lists_every_skip_and_exits_1(plugin_site):
    listed = run_cli(["plugins", "--json"], plugin_site)
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    described = {p["name"]: p for p in json.loads(listed.stdout)}
    greedy_skips = {s["name"]: s["skipped"] for s in described["greedy"]["skipped_registrations"]}
    assert set(greedy_skips) == {"pokemon", "local", "ViT-B-16"}
    assert described["greedy"]["registers"]["register_datasets"] == ["cats"]
    [second_skip] = described["second"]["skipped_registrations"]
    # a clash between two distributions names both and how to have the other one's
    assert "plugin 'greedy' (cn-clip-greedy 1.0) registered it first" in second_skip["skipped"]
    assert "CN_CLIP_POKEMON_PLUGINS=faulty,half,second" in second_skip["skipped"]
    assert described["half"]["skipped"] == "its register_datasets hook raised RuntimeError: no cats today"
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 5, warnings  # 3 of greedy's names, second's cats, half
    assert any("dataset 'cats' of plugin 'second' (cn-clip-second 1.0)" in line and "(cn-clip-greedy 1.0)" in line for line in warnings)

    text = run_cli(["plugins"], plugin_site)
    assert text.returncode == 1
    assert "half  (from cn-clip-half 1.0): SKIPPED, its register_datasets hook raised" in text.stdout
    assert "  SKIPPED model config ViT-B-16: 'ViT-B-16' is upstream's own model config" in text.stdout

    clean = run_cli(["plugins"], plugin_site, CN_CLIP_POKEMON_PLUGINS="faulty")
    assert clean.returncode == 0 and clean.stderr == ""


def test_a_plugin_taking_built_in_names_breaks_no_command(plugin_site, sprite_dataset, sprite_pictures, tmp_path):
    """The greedy plugin's pokemon dataset and local launcher would raise if used: the built-in ones are."""
    logs = tmp_path / "logs"
    trained = run_cli(
        ["train", "--train-data", str(sprite_dataset / "lmdb" / "train"), "--vision-model", "ViT-Greedy-32",
         "--text-model", "RBT-Greedy", "--context-length", "16", "--batch-size", "8", "--max-steps", "2",
         "--logs", str(logs), "--name", "greedy"],
        plugin_site, CN_CLIP_POKEMON_PLUGINS="greedy",
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    warnings = [line for line in trained.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 3 and all("plugin 'greedy' (cn-clip-greedy 1.0)" in line for line in warnings)
    checkpoint = logs / "greedy" / "checkpoints" / "epoch_latest.pt"
    picture = sorted(sprite_pictures.rglob("*.png"))[0]
    classified = run_cli(
        ["classify", str(picture), "--checkpoint", str(checkpoint), "--names", "皮卡丘", "妙蛙种子", "--json"],
        plugin_site, CN_CLIP_POKEMON_PLUGINS="greedy",
    )
    assert classified.returncode == 0, classified.stderr[-3000:]
    assert "Traceback" not in trained.stderr + classified.stderr


def test_a_plugin_skipped_whole_lends_no_name_to_train(plugin_site, sprite_dataset, tmp_path):
    """Before, the half plugin's model config was listed and accepted, then training failed deep inside."""
    trained = run_cli(
        ["train", "--train-data", str(sprite_dataset / "lmdb" / "train"), "--dataset", "none",
         "--vision-model", "ViT-Half-32", "--text-model", "RBT-Tiny-chinese", "--logs", str(tmp_path), "--name", "half"],
        plugin_site, CN_CLIP_POKEMON_PLUGINS="half",
    )
    assert trained.returncode == 1 and "Traceback" not in trained.stderr
    warning, error = trained.stderr.splitlines()
    assert "plugin 'half' (from cn-clip-half 1.0) is skipped, none of what it registers counts" in warning
    assert error.startswith("cn-clip-pokemon: error: --vision-model: unknown model config 'ViT-Half-32'")
    assert not (tmp_path / "half").exists()  # nothing started


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "boom"], "dataset 'boom' of plugin 'faulty' (cn-clip-faulty 1.0) failed in get_dataset("
                                "is_train=True, epoch_id=0): RuntimeError: the drawing machine is out of ink"),
        (["--dataset", "hollow"], "dataset 'hollow' of plugin 'faulty' (cn-clip-faulty 1.0) failed in get_dataset("
                                  "is_train=True, epoch_id=0): it returned NoneType, not upstream's DataInfo"),
        (["--launcher", "crash", "--dataset", "none", "--train-data", "TRAIN"],
         "launcher 'crash' of plugin 'faulty' (cn-clip-faulty 1.0) failed in launch(): RuntimeError: the cluster is closed"),
    ],
)
def test_a_plugin_that_raises_in_training_costs_one_line(flags, message, plugin_site, sprite_dataset, tmp_path):
    flags = [str(sprite_dataset / "lmdb" / "train") if flag == "TRAIN" else flag for flag in flags]
    trained = run_cli(
        ["train", *flags, "--vision-model", "ViT-Faulty-32", "--text-model", "RBT-Faulty", "--context-length", "16",
         "--batch-size", "4", "--max-epochs", "1", "--logs", str(tmp_path), "--name", "faulty"],
        plugin_site, CN_CLIP_POKEMON_PLUGINS="faulty",
    )
    assert trained.returncode == 1
    output = trained.stdout + trained.stderr
    assert "Traceback" not in output and "[rank0]" not in output
    [error] = [line for line in trained.stderr.splitlines() if "error" in line.lower()]
    assert error.startswith(f"cn-clip-pokemon: error: {message}") and "CN_CLIP_POKEMON_PLUGINS=" in error


@pytest.mark.parametrize("readme", ["README.md", "README_En.md"])
def test_every_hook_is_documented(readme):
    text = (REPO / readme).read_text(encoding="utf-8")
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks, "no hook specs found"
    missing = [hook for hook in hooks if not re.search(rf"\b{hook}\b", text)]
    assert not missing, f"{readme} does not document the hooks {missing}"
