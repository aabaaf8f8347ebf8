"""transformers' ChineseCLIPModel, in and out: `export-hf` folders that transformers loads offline and
that equal cn_clip (embeddings within 1e-4, weights bit-equal after the round trip), and the Hub's
folder layout read wherever a checkpoint is (load_model, classify, train --pretrained / --resume).

transformers runs here for real: `from_pretrained`, its processor and tokenizer, its own
`pipeline("zero-shot-image-classification")`. Models are tiny and random, except one made like the
official ViT-B-16 release file (as tests/test_vit_b16_cpu.py makes it) and one trained for seconds on
the small real sprite slice.
"""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from cn_clip_pokemon import checkpoint as ckpt
from cn_clip_pokemon import hf_format as hf
from cn_clip_pokemon.cli import main as cli_main
from cn_clip_pokemon.hf_export import MARKER
from cn_clip_pokemon.checkpoint_sources import read_checkpoint
from cn_clip_pokemon.model_config_resolver import matching_config_name, model_info_for
from conftest import random_checkpoint, read_metrics, run, train_command

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is part of the test extra")
from transformers import ChineseCLIPModel, ChineseCLIPProcessor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The README block the last test runs: this line, then a ```python block.
SNIPPET_MARKER = "<!-- export-hf snippet: tests/test_huggingface.py runs the python block below -->"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The shipped tiny architecture (ViT-T-8-64 + RBT-Tiny-chinese), random weights."""
    return random_checkpoint(tmp_path_factory.mktemp("tiny") / "epoch_latest.pt")


def export(checkpoint, out, *extra):
    code = cli_main(["export-hf", str(checkpoint), str(out), *extra])
    assert code == 0
    return out


def square_pictures(resolution, count=3, seed=0):
    """Square RGB pictures at the model's resolution (what classify hands upstream's transform) and
    one larger, which both sides shrink."""
    generator = torch.Generator().manual_seed(seed)
    sides = [resolution] * count + [resolution * 2 + 3]
    return [Image.fromarray(torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy()) for side in sides]


TEXTS = ["皮卡丘", "一张喷火龙的图片", "妙蛙种子 and ABC", "超梦"]


def compare_embeddings(checkpoint_path, folder):
    """Largest differences between cn_clip and transformers: (pixels, image embeddings, text
    embeddings, logit scale), on the same pictures and texts, each side with its own preprocessing
    (transformers' PIL backend, which is upstream's transform exactly; its default backend is
    compared in test_the_image_processor_matches_upstreams_transform_on_any_square_picture)."""
    from cn_clip.clip import tokenize

    loaded = ckpt.load_checkpoint(checkpoint_path, device="cpu")
    model = ChineseCLIPModel.from_pretrained(folder).eval()
    processor = ChineseCLIPProcessor.from_pretrained(folder, backend="pil")
    pictures = square_pictures(loaded.input_resolution)
    ours = upstream_pixels(pictures, loaded.input_resolution)
    theirs = processor(images=pictures, return_tensors="pt")["pixel_values"]
    tokens = tokenize(TEXTS, context_length=loaded.context_length)
    encoded = processor(text=TEXTS, padding="max_length", max_length=loaded.context_length, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], tokens), "transformers' tokenizer gives other token ids than cn_clip's"
    with torch.inference_mode():
        image_ours, image_theirs = loaded.model.encode_image(ours), model.get_image_features(pixel_values=theirs).pooler_output
        text_ours, text_theirs = loaded.model.encode_text(tokens), model.get_text_features(**encoded).pooler_output
    assert float(image_ours.std(dim=0).max()) > 1e-3 and float(text_ours.std(dim=0).max()) > 1e-3  # inputs tell apart
    return (
        float((ours - theirs).abs().max()),
        float((image_ours - image_theirs).abs().max()),
        float((text_ours - text_theirs).abs().max()),
        abs(float(loaded.model.logit_scale.detach()) - float(model.logit_scale.detach())),
    )


def plain_state_dict(path):
    state_dict, _ = ckpt.split_checkpoint(read_checkpoint(path), path)
    return ckpt.normalize_state_dict(state_dict)


def assert_bit_equal(first, second):
    assert set(first) == set(second)
    different = [key for key in first if first[key].dtype != second[key].dtype or not torch.equal(first[key], second[key])]
    assert not different, different[:5]


# --------------------------------------------------------------------------- out and back


def test_tiny_export_loads_in_transformers_and_equals_cn_clip(tiny_checkpoint, tmp_path):
    out = export(tiny_checkpoint, tmp_path / "tiny-hf")
    names = sorted(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
            "processor_config.json", "preprocessor_config.json", "README.md", MARKER} <= set(names)
    pixels, image, text, scale = compare_embeddings(tiny_checkpoint, out)
    assert pixels == 0 and image < TOLERANCE and text < TOLERANCE and scale == 0, (pixels, image, text, scale)
    # cn_clip -> transformers -> cn_clip: the very same tensors, and the config names found again
    assert_bit_equal(plain_state_dict(tiny_checkpoint), plain_state_dict(out))
    assert_bit_equal(plain_state_dict(out), plain_state_dict(export(out, tmp_path / "again")))  # and from a folder
    loaded = ckpt.load_checkpoint(out, device="cpu")
    assert (loaded.model_config["vision_model"], loaded.model_config["text_model"]) == ("ViT-T-8-64", "RBT-Tiny-chinese")
    assert loaded.model_config["model_info"] == model_info_for("ViT-T-8-64", "RBT-Tiny-chinese") | {"vision_head_width": 64}
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "ViT-T-8-64 + RBT-Tiny-chinese" in card and "pipeline_tag: zero-shot-image-classification" in card


def test_the_image_processor_matches_upstreams_transform_on_any_square_picture(tiny_checkpoint, tmp_path):
    """The PIL backend is upstream's transform exactly; transformers' default (torchvision) differs only
    when it shrinks (its antialiased bicubic is not PIL's), never at the model's own resolution."""
    from cn_clip.clip.utils import image_transform

    out = export(tiny_checkpoint, tmp_path / "tiny-hf")
    pictures = square_pictures(64, count=1) + square_pictures(40, count=1)[:1]
    upstream = torch.stack([image_transform(64)(picture) for picture in pictures])
    pil = ChineseCLIPProcessor.from_pretrained(out, backend="pil")(images=pictures, return_tensors="pt")["pixel_values"]
    default = ChineseCLIPProcessor.from_pretrained(out)(images=pictures, return_tensors="pt")["pixel_values"]
    assert torch.equal(pil, upstream)
    assert float((default[0] - upstream[0]).abs().max()) < 1e-6  # 64 px: nothing to resize
    assert float((default[2] - upstream[2]).abs().max()) < 1e-6  # 40 px: enlarged, same filter
    assert float((default[1] - upstream[1]).abs().max()) < 0.1  # 131 px shrunk: close, not equal


def test_vit_b16_official_layout_exports_equal_and_comes_back_bit_equal(tmp_path):
    """ViT-B-16 + RoBERTa-wwm-ext-base-chinese in the official release layout ({"state_dict"}, fp16,
    DDP's "module." keys), random weights: the full-size architecture the Hub's model has."""
    official = tmp_path / "clip_cn_vit-b-16.pt"
    random_checkpoint(official, "ViT-B-16", "RoBERTa-wwm-ext-base-chinese", release=True)

    started = time.perf_counter()
    out = export(official, tmp_path / "vit-b-16-hf")
    seconds = time.perf_counter() - started
    size = sum(path.stat().st_size for path in out.iterdir())
    print(f"\nexport-hf ViT-B-16: {seconds:.1f} s in-process, {size / 1e6:.1f} MB ({(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB weights)")
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["patch_size"] == 16 and config["vision_config"]["image_size"] == 224
    assert config["text_config"]["num_hidden_layers"] == 12 and config["projection_dim"] == 512
    # read back, the folder is named like upstream's release again
    back = hf.model_info_from_hf_config(config, "config.json")
    assert [matching_config_name(back, vision=vision)[0] for vision in (True, False)] == ["ViT-B-16", "RoBERTa-wwm-ext-base-chinese"]
    pixels, image, text, scale = compare_embeddings(official, out)
    print(f"ViT-B-16 largest differences: pixels {pixels:.2e}, image {image:.2e}, text {text:.2e}, logit scale {scale:.2e}")
    assert pixels == 0 and image < TOLERANCE and text < TOLERANCE and scale == 0
    # fp16 in the release, fp32 in the export: the same values, and bit-equal from there on
    assert_bit_equal({key: value.float() for key, value in plain_state_dict(official).items()}, plain_state_dict(out))


def test_transformers_own_folders_load_as_cn_clip(tmp_path):
    """The Hub's layout as transformers itself writes it (a config without defaults, safetensors or
    pytorch_model.bin, no tokenizer), read by load_model: embeddings equal transformers' within 1e-4."""
    from transformers import ChineseCLIPConfig

    from cn_clip_pokemon import load_model

    config = ChineseCLIPConfig(
        text_config={"vocab_size": 21128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 40},
        vision_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 48, "patch_size": 16},
        projection_dim=32,
    )
    torch.manual_seed(1)
    model = ChineseCLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    safetensors_folder, bin_folder = tmp_path / "hub-safetensors", tmp_path / "hub-bin"
    model.save_pretrained(safetensors_folder)
    bin_folder.mkdir()
    # the second folder's config.json leaves out every default value, as older transformers wrote them
    full = json.loads((safetensors_folder / "config.json").read_text())
    for part, defaults in (("text_config", hf.TEXT_DEFAULTS), ("vision_config", hf.VISION_DEFAULTS)):
        full[part] = {key: value for key, value in full[part].items() if defaults.get(key, object()) != value}
    assert "layer_norm_eps" not in json.dumps(full)
    (bin_folder / "config.json").write_text(json.dumps(full))
    torch.save(model.state_dict(), bin_folder / "pytorch_model.bin")

    pictures = square_pictures(48)
    pixels = upstream_pixels(pictures, 48)
    tokens = torch.tensor([[101, 4649, 1305, 687, 102, 0], [101, 671, 2476, 4638, 1745, 102]])
    with torch.inference_mode():
        image_theirs = model.get_image_features(pixel_values=pixels).pooler_output
        text_theirs = model.get_text_features(input_ids=tokens, attention_mask=tokens.ne(0).long()).pooler_output
    for folder in (safetensors_folder, bin_folder):
        ours, _ = load_model(str(folder), device="cpu")
        with torch.inference_mode():
            assert float((ours.encode_image(pixels) - image_theirs).abs().max()) < TOLERANCE
            assert float((ours.encode_text(tokens) - text_theirs).abs().max()) < TOLERANCE
        assert float(ours.logit_scale.detach()) == 3.0 and ours.visual.input_resolution == 48


def upstream_pixels(pictures, resolution):
    from cn_clip.clip.utils import image_transform

    return torch.stack([image_transform(resolution)(picture) for picture in pictures])


def test_our_defaults_for_config_fields_are_transformers_defaults():
    from transformers import ChineseCLIPConfig, ChineseCLIPTextConfig, ChineseCLIPVisionConfig

    text, vision, joint = ChineseCLIPTextConfig(), ChineseCLIPVisionConfig(), ChineseCLIPConfig()
    assert {key: getattr(text, key) for key in hf.TEXT_DEFAULTS} == hf.TEXT_DEFAULTS
    assert {key: getattr(vision, key) for key in hf.VISION_DEFAULTS} == hf.VISION_DEFAULTS
    assert joint.projection_dim == hf.MODEL_DEFAULTS["projection_dim"]


# --------------------------------------------------------------------------- what cannot be, and where


def test_a_resnet_vision_tower_is_refused_naming_the_field_before_writing(tmp_path, capsys):
    info = dict(model_info_for("ViT-T-8-64", "RBT-Tiny-chinese"), vision_layers=[1, 1, 1, 1], vision_width=8,
                image_resolution=32, vision_patch_size=None)
    resnet = random_checkpoint(tmp_path / "rn.pt", None, None, model_info=info)
    out = tmp_path / "rn-hf"
    assert cli_main(["export-hf", str(resnet), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vision_layers=[1, 1, 1, 1]" in err and "ResNet" in err
    assert sorted(os.listdir(tmp_path)) == ["rn.pt"]  # no OUT, no temporary folder


def test_out_is_written_whole_and_only_over_an_earlier_export(tiny_checkpoint, tmp_path, capsys):
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    assert cli_main(["export-hf", str(tiny_checkpoint), str(users)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.txt" in err
    assert os.listdir(users) == ["notes.txt"] and (users / "notes.txt").read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    export(tiny_checkpoint, empty)
    first = (empty / "model.safetensors").read_bytes()
    # an earlier export is replaced (here by another checkpoint's), leaving no temporary folder
    other = random_checkpoint(tmp_path / "other.pt", None, None, model_info=model_info_for("ViT-T-8-64", "RBT-Tiny-chinese"), seed=1)
    export(other, empty)
    assert (empty / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other.pt", "users"]
    # ... but not once someone put something of theirs in it
    (empty / "upload.sh").write_text("git push")
    assert cli_main(["export-hf", str(tiny_checkpoint), str(empty)]) == 1
    assert "upload.sh" in capsys.readouterr().err
    assert (empty / "upload.sh").is_file() and (empty / "model.safetensors").is_file()
    # ... nor once a name the marker lists as a file is now the user's folder
    (empty / "upload.sh").unlink()
    (empty / "README.md").unlink()
    (empty / "README.md").mkdir()
    (empty / "README.md" / "draft.md").write_text("my card")
    assert cli_main(["export-hf", str(tiny_checkpoint), str(empty)]) == 1
    assert "README.md/" in capsys.readouterr().err
    assert (empty / "README.md" / "draft.md").read_text() == "my card"
    # a killed run's temporary folder (only files) is removed by the next run; one holding a folder is kept
    shutil.rmtree(empty / "README.md")
    (tmp_path / ".empty.tmp-abcd1234").mkdir()
    (tmp_path / ".empty.tmp-abcd1234" / "config.json").write_text("{}")
    (tmp_path / ".empty.tmp-zyxw9876" / "mine").mkdir(parents=True)
    export(tiny_checkpoint, empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".empty.tmp-zyxw9876", "empty", "other.pt", "users"]


def test_without_transformers_the_command_says_what_to_install(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    assert cli_main(["export-hf", str(tiny_checkpoint), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "[hf]" in err
    assert not (tmp_path / "out").exists()


def test_folders_that_are_not_chinese_clip_are_named(tiny_checkpoint, tmp_path, capsys):
    out = export(tiny_checkpoint, tmp_path / "tiny-hf")
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text((out / "config.json").read_text())
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (clip / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((out / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:1000])
    picture = tmp_path / "yellow.png"
    Image.new("RGBA", (40, 30), "yellow").save(picture)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "epoch_latest.pt").write_bytes(tiny_checkpoint.read_bytes())
    expected = {
        weightless: "no model.safetensors or pytorch_model.bin",
        clip: "transformers clip model, not chinese_clip",
        damaged: "not a readable safetensors file",
        run_dir: f"did you mean {run_dir / 'epoch_latest.pt'}",
    }
    for folder, message in expected.items():
        code = cli_main(["classify", str(picture), "--checkpoint", str(folder), "--names", "皮卡丘"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and message in err and str(folder) in err, err


def test_captions_travel_with_the_export(tmp_path):
    captions = ["皮卡丘", "小火龙", "一只杰尼龟"]
    source = random_checkpoint(tmp_path / "c.pt", None, None, model_info=model_info_for("ViT-T-8-64", "RBT-Tiny-chinese"),
                               captions=captions)
    out = export(source, tmp_path / "c-hf")
    assert json.loads((out / hf.CAPTIONS_FILE).read_text(encoding="utf-8")) == captions
    assert read_checkpoint(out)["captions"] == captions
    assert "3, in `captions.json`" in (out / "README.md").read_text(encoding="utf-8")


def test_framing_travels_with_the_export(tmp_path):
    """A checkpoint trained on subject-framed pictures exports its framing in config.json; transformers
    reads the folder as before, and loading the folder back frames pictures as the checkpoint did."""
    from cn_clip_pokemon.checkpoint import load_checkpoint

    info = model_info_for("ViT-T-8-64", "RBT-Tiny-chinese")
    framed = export(random_checkpoint(tmp_path / "f.pt", None, None, model_info=info, framing="subject"), tmp_path / "f-hf")
    plain = export(random_checkpoint(tmp_path / "p.pt", None, None, model_info=info), tmp_path / "p-hf")
    config = json.loads((framed / hf.CONFIG_FILE).read_text(encoding="utf-8"))
    assert config[hf.FRAMING_ENTRY] == "subject"
    assert hf.FRAMING_ENTRY not in json.loads((plain / hf.CONFIG_FILE).read_text(encoding="utf-8"))
    assert load_checkpoint(framed, device="cpu").framing == "subject"
    assert load_checkpoint(plain, device="cpu").framing == "as-is"
    assert "Framing: this model was trained on pictures cropped to their subject" in (framed / "README.md").read_text(encoding="utf-8")
    from transformers import ChineseCLIPModel

    ChineseCLIPModel.from_pretrained(framed)  # the extra entry does not stop transformers


# --------------------------------------------------------------------------- a trained model, both ways


@pytest.fixture(scope="module")
def trained(runner, sprite_dataset, tmp_path_factory):
    """The test architecture trained for seconds on the real sprite slice, and its export."""
    logs = tmp_path_factory.mktemp("trained")
    run(train_command(runner, sprite_dataset / "lmdb" / "train", logs, "--max-epochs", "6"))
    checkpoint = logs / "run" / "checkpoints" / "epoch_latest.pt"
    out = export(checkpoint, logs / "pokedex-hf", "--dataset", str(sprite_dataset))
    return checkpoint, out


def test_export_card_records_training_data_and_evaluation(trained, sprite_dataset):
    from cn_clip_pokemon.evaluation import evaluate

    checkpoint, out = trained
    card = (out / "README.md").read_text(encoding="utf-8")
    assert str(sprite_dataset / "lmdb" / "train") in card and "25 names" in card
    top1 = evaluate(checkpoint, sprite_dataset, progress=False, cache=False)["zero_shot"]["top1"]
    assert f"| {top1:.2f} |" in card


def test_pipeline_agrees_with_classify_on_the_test_split(trained, sprite_dataset):
    """transformers' own zero-shot pipeline against `classify` on every test picture, both given the
    same RGB squares (transparency on white, padded, at the model's resolution: what classify does)."""
    from transformers import pipeline

    from cn_clip_pokemon.dataset_split import SplitPictures
    from cn_clip_pokemon.images import composite_on_white, fit_square
    from cn_clip_pokemon.classify import Classifier

    checkpoint, out = trained
    with SplitPictures(sprite_dataset, "test") as split:
        names = list(split.info["names"])
        pictures = list(split.pictures())
    classifier = Classifier(checkpoint, names=names, cache=False, progress=False)
    ours = [ranked[0][0] for ranked in classifier.classify_images(pictures, top_k=1)]
    zero_shot = pipeline("zero-shot-image-classification", model=str(out), device="cpu")
    resolution = classifier.loaded.input_resolution
    squares = [fit_square(composite_on_white(picture), resolution) for picture in pictures]
    theirs = [result[0]["label"] for result in zero_shot(squares, candidate_labels=names, hypothesis_template="{}")]
    agree = sum(a == b for a, b in zip(ours, theirs)) / len(ours)
    print(f"\npipeline vs classify, top-1: {agree * 100:.1f}% of {len(ours)} test pictures agree")
    assert len(ours) >= 20 and agree >= 0.99


def test_train_starts_from_a_transformers_folder(runner, trained, sprite_dataset, tmp_path):
    """`train --pretrained DIR` and `--resume DIR` go through upstream's main with the folder's weights."""
    _, out = trained
    train = sprite_dataset / "lmdb" / "train"
    for flags in (["--pretrained", str(out)], ["--resume", str(out), "--reset-data-offset", "--reset-optimizer"]):
        logs = tmp_path / flags[0].strip("-")
        result = run(train_command(runner, train, logs, *flags, "--max-steps", "1"))
        log_text = result.stdout + result.stderr
        assert f"loaded checkpoint '{out}'" in log_text, log_text[-2000:]
        assert [m["step"] for m in read_metrics(logs) if not m.get("epoch_end")] == [1]
    # a folder without weights is named before anything starts
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    done = subprocess.run(train_command(runner, train, tmp_path / "x", "--pretrained", str(empty)), capture_output=True, text=True, timeout=240)
    assert done.returncode == 1 and f"{empty} is a folder without config.json" in done.stderr


def readme_snippet():
    """The python block after SNIPPET_MARKER, in both READMEs (the same block)."""
    blocks = {}
    for path in (REPO / "README.md", REPO / "README_En.md"):
        found = re.search(re.escape(SNIPPET_MARKER) + r"\s*```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
        assert found, f"{path.name}: no python block follows {SNIPPET_MARKER!r}"
        blocks[path.name] = found.group(1)
    assert blocks, f"no README block follows {SNIPPET_MARKER!r}"
    assert len(set(blocks.values())) == 1, f"the snippet differs between {', '.join(blocks)}"
    return next(iter(blocks.values()))


def test_readme_snippet_runs(trained, sprite_pictures, tmp_path):
    """The README's transformers snippet runs on the export and answers as `classify` does on the
    same picture among the same names (which name wins depends on the few seconds of training and
    on the CPU's precision, so the test compares doors rather than asking for Pikachu)."""
    from cn_clip_pokemon.classify import Classifier

    checkpoint, out = trained
    snippet = readme_snippet()
    names = ast.literal_eval(re.search(r"names = (\[[^\]]*\])", snippet).group(1))
    folder = re.search(r'folder = "([^"]+)"', snippet).group(1)
    (tmp_path / folder).symlink_to(out, target_is_directory=True)
    (tmp_path / "pikachu.png").write_bytes((sprite_pictures / "0025皮卡丘" / "front_00.png").read_bytes())
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-3000:]
    first = ast.literal_eval(done.stdout.splitlines()[0])
    with Image.open(tmp_path / "pikachu.png") as picture:
        [(label, score)] = Classifier(checkpoint, names=names, cache=False, progress=False).classify_images([picture], top_k=1)[0]
    assert first["label"] == label and first["score"] == pytest.approx(score, abs=1e-4), (done.stdout, label, score)
