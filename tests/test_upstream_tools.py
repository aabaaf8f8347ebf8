"""Upstream's own tools take our checkpoints: load_from_name, eval feature extraction, ONNX export.

One resolver (cn_clip_pokemon.model_config_resolver) finds model configs for training, our loader and
upstream's tools (patches 0003, 0019, 0020 and 0024). The tools run as upstream's scripts do, as ``__main__`` in
a process whose first import is cn_clip_pokemon, on a tiny checkpoint and a tiny dataset built here,
on the CPU.
"""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.model_config_resolver import (
    UnknownModelConfig,
    available_model_configs,
    model_config_path,
    upstream_config_dir,
)
from conftest import (
    EXTRACT_FEATURES, RUN_MODULE, load_checkpoint, random_checkpoint, registered_model_config, run_upstream_tool,
)

REPO = Path(__file__).resolve().parents[1]
VISION, TEXT = "ViT-T-8-64", "RBT-Tiny-chinese"
PYTORCH_TO_ONNX = "cn_clip.deploy.pytorch_to_onnx"
EXTRACT_FEATURES_ONNX = "cn_clip.eval.extract_features_onnx"


# --------------------------------------------------------------------------- the resolver


def test_names_resolve_to_plugin_configs_and_upstreams_files():
    assert model_config_path("ViT-B-16") == upstream_config_dir() / "ViT-B-16.json"
    assert model_config_path("ViT-L/14") == upstream_config_dir() / "ViT-L-14.json"  # "/" -> "-", as upstream
    assert model_config_path(VISION) == REPO / "cn_clip_pokemon" / "model_configs" / f"{VISION}.json"
    names = available_model_configs()
    assert names.index("ViT-B-16") < names.index(VISION) and TEXT in names  # upstream's first


def test_an_unknown_name_lists_the_names_available():
    with pytest.raises(UnknownModelConfig) as caught:
        model_config_path("ViT-Z-99")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, UserError)
    message = str(caught.value)
    assert "'ViT-Z-99'" in message and "ViT-B-16" in message and VISION in message and TEXT in message


@pytest.fixture
def dict_config(tmp_path, monkeypatch):
    """A plugin registering a vision config as a dict (our tiny ViT at another width); the cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = json.loads(model_config_path(VISION).read_text(encoding="utf-8"))
    config["vision_width"] = 64

    with registered_model_config("ViT-Resolver-Dict-Test", config, "resolver-dict-test"):
        yield config


def test_a_registered_dict_is_written_once_and_every_caller_resolves_the_same_file(dict_config, tmp_path):
    import cn_clip_pokemon  # noqa: F401  (the patches)
    from cn_clip.clip.utils import create_model
    from cn_clip.eval.data import fetch_resolution as eval_resolution
    from cn_clip.training.data import fetch_resolution, model_config_file

    from cn_clip_pokemon.model_config_resolver import read_model_config

    path = model_config_path("ViT-Resolver-Dict-Test")
    assert path.parent == tmp_path / "cache" / "cn-clip-pokemon" / "model_configs"
    assert json.loads(path.read_text(encoding="utf-8")) == dict_config
    written = path.stat().st_mtime_ns
    assert model_config_path("ViT-Resolver-Dict-Test") == path and path.stat().st_mtime_ns == written
    assert "ViT-Resolver-Dict-Test" in available_model_configs()

    # training, our loader and upstream's load_from_name/eval all read this one file
    assert model_config_file("ViT-Resolver-Dict-Test") == path
    assert read_model_config("ViT-Resolver-Dict-Test")["vision_width"] == 64
    assert fetch_resolution("ViT-Resolver-Dict-Test") == eval_resolution("ViT-Resolver-Dict-Test") == 64
    model = create_model(f"ViT-Resolver-Dict-Test@{TEXT}")
    assert model.visual.conv1.out_channels == 64

    dict_config["vision_width"] = 32  # a changed dict gets a file of its own
    changed = model_config_path("ViT-Resolver-Dict-Test")
    assert changed != path and json.loads(changed.read_text(encoding="utf-8"))["vision_width"] == 32


def test_a_registered_dict_goes_to_the_temporary_folder_when_the_cache_cannot_be_written(dict_config, tmp_path, monkeypatch):
    import stat
    import tempfile

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache root would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    path = model_config_path("ViT-Resolver-Dict-Test")
    assert path.parent == tmp_path / "tmp" / f"cn-clip-pokemon-model-configs-{os.getuid()}" and blocker not in path.parents
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and path.parent.stat().st_uid == os.getuid()  # private
    assert json.loads(path.read_text(encoding="utf-8")) == dict_config


# --------------------------------------------------------------------------- a tiny checkpoint and dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint (weights fp16-exact, as upstream's create_model rounds them) and a tiny dataset."""
    from PIL import Image

    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.pokedex import Pokedex

    root = tmp_path_factory.mktemp("upstream-tools")
    # upstream's loaders round every weight to fp16 and back: make that exact
    checkpoint = random_checkpoint(root / "tiny.pt", VISION, TEXT, fp16_exact=True, epoch=1, step=3)

    pokedex = Pokedex.load()
    pictures = root / "pictures"
    pictures.mkdir()
    for index, number in enumerate(list(pokedex.numbers())[:10]):
        picture = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
        picture.paste((25 * index, 255 - 25 * index, 60, 255), (4 + index, 6, 30, 36 - index))
        picture.save(pictures / f"{number:04d}{pokedex.name(number)}.png")
    dataset = root / "dataset"
    build_dataset(pictures, dataset, image_size=64, test_fraction=0.3, seed=0, workers=1, progress=False)
    return {"root": root, "checkpoint": checkpoint, "dataset": dataset, "embed_dim": load_checkpoint(checkpoint)["model_config"]["model_info"]["embed_dim"]}


def test_load_from_name_gives_our_loaders_model(tiny):
    import torch

    import cn_clip_pokemon
    from cn_clip.clip import load_from_name, tokenize

    theirs, their_preprocess = load_from_name(
        str(tiny["checkpoint"]), device="cpu", vision_model_name=VISION, text_model_name=TEXT, input_resolution=64
    )
    ours, _ = cn_clip_pokemon.load_model(tiny["checkpoint"], device="cpu")
    theirs.eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    texts = tokenize(["皮卡丘", "妙蛙种子"], context_length=52)
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images), ours.encode_image(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(theirs.encode_text(texts), ours.encode_text(texts), rtol=0, atol=1e-6)
    assert their_preprocess.transforms[0].size == (64, 64)


def test_load_from_name_names_an_unknown_architecture(tiny):
    import cn_clip_pokemon  # noqa: F401
    from cn_clip.clip import load_from_name

    with pytest.raises(ValueError, match=r"unknown model config 'ViT-Z-99'.*ViT-T-8-64"):
        load_from_name(str(tiny["checkpoint"]), device="cpu", vision_model_name="ViT-Z-99", text_model_name=TEXT, input_resolution=64)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_upstreams_eval_feature_extraction_runs_on_the_cpu(tiny):
    import torch

    import cn_clip_pokemon
    from cn_clip.clip import tokenize
    from cn_clip.eval.data import EvalImgDataset, _preprocess_text

    dataset, out = tiny["dataset"], tiny["root"] / "features"
    out.mkdir()
    run_upstream_tool(
        EXTRACT_FEATURES,
        [
            "--extract-image-feats", "--extract-text-feats",
            "--image-data", dataset / "lmdb" / "test" / "imgs", "--text-data", dataset / "test_texts.jsonl",
            "--image-feat-output-path", out / "test_imgs.img_feat.jsonl",
            "--text-feat-output-path", out / "test_texts.txt_feat.jsonl",
            "--img-batch-size", 2, "--text-batch-size", 2, "--context-length", 52,
            "--resume", tiny["checkpoint"], "--vision-model", VISION, "--text-model", TEXT,
        ],
        cwd=tiny["root"],
        CUDA_VISIBLE_DEVICES="",  # --device auto must find the CPU by itself
    )
    texts = read_jsonl(dataset / "test_texts.jsonl")
    dataset_images = EvalImgDataset(str(dataset / "lmdb" / "test" / "imgs"), resolution=64)
    images = [dataset_images[i] for i in range(len(dataset_images))]  # (id, pixels); upstream's reads in order, once
    text_features = read_jsonl(out / "test_texts.txt_feat.jsonl")
    image_features = read_jsonl(out / "test_imgs.img_feat.jsonl")
    assert len(texts) >= 2 and len(images) >= 2
    assert [row["text_id"] for row in text_features] == [row["text_id"] for row in texts]
    assert [row["image_id"] for row in image_features] == [image_id for image_id, _ in images]
    for row in text_features + image_features:
        assert len(row["feature"]) == tiny["embed_dim"]

    # the features are the checkpoint's: our loader, normalised as upstream does
    ours, _ = cn_clip_pokemon.load_model(tiny["checkpoint"], device="cpu")
    with torch.no_grad():
        expected = ours.encode_text(tokenize([_preprocess_text(row["text"]) for row in texts], context_length=52))
        got = torch.tensor([row["feature"] for row in text_features])
        torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=0, atol=1e-5)
        by_id = {row["image_id"]: row["feature"] for row in image_features}
        ids, pixels = zip(*images)
        expected = ours.encode_image(torch.stack(pixels))
        got = torch.tensor([by_id[image_id] for image_id in ids])
        torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=0, atol=1e-5)


def test_upstreams_onnx_export_runs_in_onnxruntime(tiny):
    import torch

    pytest.importorskip("onnx", reason="pip install 'cn-clip-pokemon[test]' for the ONNX export test")
    ort = pytest.importorskip("onnxruntime", reason="pip install 'cn-clip-pokemon[test]' for the ONNX export test")
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 9):
        pytest.importorskip("onnxscript", reason="torch.onnx.export needs onnxscript since torch 2.9")
    import cn_clip_pokemon
    from cn_clip.clip import tokenize

    prefix = tiny["root"] / "deploy" / "tiny"
    prefix.parent.mkdir()
    run_upstream_tool(
        PYTORCH_TO_ONNX,
        [
            "--model-arch", f"{VISION}@{TEXT}", "--pytorch-ckpt-path", tiny["checkpoint"],
            "--save-onnx-path", prefix, "--convert-text", "--convert-vision",
        ],
        cwd=tiny["root"],
        CUDA_VISIBLE_DEVICES="",
    )
    ours, preprocess = cn_clip_pokemon.load_model(tiny["checkpoint"], device="cpu")
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # batch 1: the export's shape
    text = tokenize(["喷火龙"], context_length=52)
    with torch.no_grad():
        expected = {"img": ours(image, None).numpy(), "txt": ours(None, text).numpy()}
    inputs = {"img": ("image", image.numpy()), "txt": ("text", text.numpy())}
    for kind in ("img", "txt"):
        for precision, tolerance in (("fp32", 1e-4), ("fp16", 2e-2)):
            path = Path(f"{prefix}.{kind}.{precision}.onnx")
            assert path.is_file(), f"{path} was not written"
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name, value = inputs[kind]
            (got,) = session.run(None, {name: value})
            assert got.shape == (1, tiny["embed_dim"])
            torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected[kind]), rtol=0, atol=tolerance)

    # upstream's feature extraction through the exported models, on the CPU, gives the checkpoint's features
    from cn_clip.eval.data import _preprocess_text

    dataset, out = tiny["dataset"], tiny["root"] / "onnx-features"
    out.mkdir()
    run_upstream_tool(
        EXTRACT_FEATURES_ONNX,
        [
            "--extract-text-feats", "--text-data", dataset / "test_texts.jsonl",
            "--text-feat-output-path", out / "test_texts.txt_feat.jsonl",
            "--extract-image-feats", "--image-data", dataset / "lmdb" / "test" / "imgs",
            "--image-feat-output-path", out / "test_imgs.img_feat.jsonl",
            "--onnx-image-model", f"{prefix}.img.fp32.onnx", "--onnx-text-model", f"{prefix}.txt.fp32.onnx",
            "--context-length", 52, "--vision-model", VISION, "--text-model", TEXT, "--device", "cpu",
        ],
        cwd=tiny["root"],
    )
    texts = read_jsonl(dataset / "test_texts.jsonl")
    rows = read_jsonl(out / "test_texts.txt_feat.jsonl")
    assert [row["text_id"] for row in rows] == [row["text_id"] for row in texts]
    assert len(read_jsonl(out / "test_imgs.img_feat.jsonl")) == len(texts)  # one picture per Pokemon here
    with torch.no_grad():
        expected = ours.encode_text(tokenize([_preprocess_text(row["text"]) for row in texts], context_length=52))
    got = torch.tensor([row["feature"] for row in rows])
    torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- the README's commands


def readme_tool_lines():
    """The README lines that run upstream's tools this way (checked for the same text in both READMEs)."""
    lines = []
    for readme in ("README.md", "README_En.md"):
        text = (REPO / readme).read_text(encoding="utf-8")
        lines += [line.strip() for line in text.splitlines() if line.strip().startswith('python -c "import cn_clip_pokemon, runpy;')]
    return sorted(set(lines))


def test_the_readmes_show_the_three_tools():
    modules = {re.search(r"run_module\('([\w.]+)'", line).group(1) for line in readme_tool_lines()}
    assert modules == {EXTRACT_FEATURES, PYTORCH_TO_ONNX, EXTRACT_FEATURES_ONNX}


@pytest.mark.parametrize("line", readme_tool_lines())
def test_readme_tool_line_uses_flags_the_tool_knows(line, tmp_path):
    words = shlex.split(line)
    assert words[:2] == ["python", "-c"] and words[2] == RUN_MODULE.format(re.search(r"run_module\('([\w.]+)'", line).group(1))
    if "onnx" in line:
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    done = subprocess.run([sys.executable, "-c", words[2], "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    flags = {word for word in words[3:] if word.startswith("--")}
    missing = [flag for flag in flags if flag not in done.stdout]
    assert not missing, f"{words[2]} --help does not know {missing} used in the README"
