"""One answer through every door: the Python API (load_model / load_checkpoint), `classify`, the
builder and `evaluate` see the same picture the same way and rank the same names.

- Pictures of every awkward kind (transparent pixels stored black, a picture made in memory, P+tRNS
  GIF frames, a 128x64 picture, LA, 16-bit, CMYK) reach the model as the same tensor through the
  API's ``preprocess`` as through `classify` (captured at the model's input) and the builder's
  stored picture, and get the same probabilities as `classify --json`.
- A checkpoint records the captions of the dataset it was trained on; `classify` and `evaluate`
  rank them by default, a checkpoint without them falls back to the Pokedex in one line.
- `evaluate` takes any caption of a picture's group as a hit.
- Logs stay quiet: progress bars only on a terminal, a repeated warning once naming its loader.
- A dataset on which upstream's feature extraction ran is rebuilt without losing its outputs.
"""
import json
import os
import pty
import pydoc
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip import tokenize  # noqa: E402
from cn_clip.clip.model import CLIP  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.images import PicturePreprocess  # noqa: E402
from conftest import cpu_env, random_checkpoint, read_metrics, run, train_command  # noqa: E402

NAMES = ["红色圆形", "蓝色方块", "绿色三角", "黄色星星", "皮卡丘"]
RESOLUTION = 64  # ViT-T-8-64


@pytest.fixture(scope="module")
def checkpoint_with_captions(tmp_path_factory):
    """Our tiny registered architecture, random weights, recording NAMES as its captions."""
    return random_checkpoint(tmp_path_factory.mktemp("door") / "epoch_latest.pt", seed=11, captions=NAMES)


def disc_on(size, background, colour=(220, 40, 40, 255)):
    picture = Image.new("RGBA", size, background)
    ImageDraw.Draw(picture).ellipse((4, 4, size[0] - 5, size[1] - 5), fill=colour)
    return picture


def palette_frames():
    """Three P-mode frames with index 0 transparent (tRNS), one palette: a disc moving right."""
    palette = [255, 0, 255, 230, 40, 40, 40, 90, 230] + [0] * (256 * 3 - 9)
    frames = []
    for shift in (0, 6, 12):
        frame = Image.new("P", (40, 40), 0)
        frame.putpalette(palette)
        ImageDraw.Draw(frame).ellipse((4 + shift, 8, 22 + shift, 30), fill=1 + (shift == 6))
        frame.info["transparency"] = 0
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def awkward_pictures(tmp_path_factory):
    """``{caption: (file for classify, what the API is given)}``: every kind of picture the issue names."""
    folder = tmp_path_factory.mktemp("awkward")
    pictures = {}

    black = disc_on((40, 30), (0, 0, 0, 0))  # transparent pixels stored black, as sprites often are
    black.save(folder / "透明黑底.png")
    pictures["透明黑底"] = (folder / "透明黑底.png", Image.open(folder / "透明黑底.png"))

    made = Image.new("RGBA", (48, 40), (0, 0, 0, 0))  # a picture made in memory, given as it is
    ImageDraw.Draw(made).rectangle((10, 8, 37, 30), fill=(30, 60, 220, 200))
    made.save(folder / "内存图片.png")
    pictures["内存图片"] = (folder / "内存图片.png", made)

    frames = palette_frames()
    frames[0].save(folder / "动画.gif", save_all=True, append_images=frames[1:], transparency=0, disposal=2, loop=0)
    for index, frame in enumerate(frames):  # each frame on its own, for classify (which reads frame 0)
        frame.save(folder / f"第{index}帧.gif", transparency=0)
        animation = Image.open(folder / "动画.gif")
        animation.seek(index)  # Pillow decodes frames after the first as RGBA
        pictures[f"第{index}帧"] = (folder / f"第{index}帧.gif", animation)

    wide = Image.new("RGB", (128, 64), (250, 250, 250))
    ImageDraw.Draw(wide).ellipse((40, 8, 88, 56), fill=(40, 160, 60))
    wide.save(folder / "宽图.png")
    pictures["宽图"] = (folder / "宽图.png", Image.open(folder / "宽图.png"))

    grey = disc_on((36, 36), (0, 0, 0, 0)).convert("LA")
    grey.save(folder / "灰度透明.png")
    pictures["灰度透明"] = (folder / "灰度透明.png", Image.open(folder / "灰度透明.png"))

    deep = Image.fromarray((torch.arange(32 * 32).reshape(32, 32) * 60).numpy().astype("uint16"))  # I;16
    deep.save(folder / "十六位.png")
    pictures["十六位"] = (folder / "十六位.png", Image.open(folder / "十六位.png"))

    cmyk = Image.new("CMYK", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(cmyk).ellipse((5, 5, 35, 35), fill=(0, 200, 200, 0))
    cmyk.save(folder / "印刷色.jpg")
    pictures["印刷色"] = (folder / "印刷色.jpg", Image.open(folder / "印刷色.jpg"))
    return pictures


@pytest.fixture
def model_inputs(monkeypatch):
    """Every picture batch the model is given (the tensor at its input), in order."""
    seen = []
    encode_image = CLIP.encode_image

    def recording(self, image, mask_ratio=0):
        seen.append(image.detach().cpu().clone())
        return encode_image(self, image, mask_ratio)

    monkeypatch.setattr(CLIP, "encode_image", recording)
    return seen


def api_probabilities(loaded, picture):
    """What a Python user writes (the README's example): preprocess, encode, softmax over the captions."""
    model, names = loaded.model, loaded.captions
    with torch.no_grad():
        image = model.encode_image(loaded.preprocess(picture).unsqueeze(0))
        text = model.encode_text(tokenize(names, context_length=loaded.context_length))
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return dict(zip(names, (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)[0].tolist()))


def test_api_and_classify_see_the_same_tensor_and_give_the_same_probabilities(
    checkpoint_with_captions, awkward_pictures, model_inputs, capsys
):
    files = [str(path) for path, _ in awkward_pictures.values()]
    assert main(["classify", *files, "--checkpoint", str(checkpoint_with_captions), "--device", "cpu", "--json",
                 "--top-k", str(len(NAMES)), "--no-cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["names_from"] == "checkpoint" and report["names"] == len(NAMES)  # its own captions
    cli_tensors = torch.cat(model_inputs)
    assert cli_tensors.shape == (len(files), 3, RESOLUTION, RESOLUTION)

    model, preprocess = cn_clip_pokemon.load_model(checkpoint_with_captions, device="cpu")
    assert isinstance(preprocess, PicturePreprocess)
    loaded = cn_clip_pokemon.load_checkpoint(checkpoint_with_captions, device="cpu")
    assert loaded.captions == NAMES
    for (caption, (path, given)), cli_tensor, result in zip(awkward_pictures.items(), cli_tensors, report["results"]):
        api_tensor = preprocess(given)
        assert torch.equal(api_tensor, cli_tensor), caption
        assert torch.equal(preprocess(path), cli_tensor), caption  # a path works too
        expected = {p["name"]: p["probability"] for p in result["predictions"]}
        assert api_probabilities(loaded, given) == pytest.approx(expected, abs=1e-5), caption

    # what load_model used to hand out, upstream's transform alone, sees black and a squashed picture
    from cn_clip.clip.utils import image_transform

    for caption in ("透明黑底", "宽图"):
        path, given = awkward_pictures[caption]
        assert not torch.allclose(image_transform(RESOLUTION)(given.convert("RGB")), preprocess(given), atol=0.1), caption
    # transparent pixels (the corner) are white: (1 - mean) / std of upstream's normalisation
    corner = preprocess(awkward_pictures["透明黑底"][1])[:, 0, 0]
    white = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711])
    assert torch.allclose(corner, white, atol=1e-5)


def test_the_builder_stores_the_picture_the_api_sees(awkward_pictures, tmp_path):
    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.dataset_split import SplitPictures

    folder = tmp_path / "pictures"
    folder.mkdir()
    for caption, (path, _) in awkward_pictures.items():
        if caption != "内存图片":
            os.link(path, folder / path.name)
    build_dataset(folder, tmp_path / "ds", image_size=RESOLUTION, any_names=True, valid_fraction=0, test_fraction=0,
                  workers=1, progress=False)
    preprocess = PicturePreprocess(RESOLUTION)
    checked = 0
    with SplitPictures(tmp_path / "ds", "train") as stored:
        for image_id in stored.image_ids:
            caption = stored.label(image_id)
            path, given = awkward_pictures[caption]
            if caption.startswith("第"):
                given = Image.open(path)  # the builder reads a file's first frame
            assert torch.equal(preprocess(stored.picture(image_id)), preprocess(given)), caption
            checked += 1
    assert checked == len(awkward_pictures) - 1


def test_help_of_load_model_names_the_preprocess():
    text = pydoc.render_doc(cn_clip_pokemon.load_model)
    assert "PicturePreprocess" in text and "composited on white" in text and "square" in text
    assert "captions" in pydoc.render_doc(cn_clip_pokemon.load_checkpoint)


def test_a_checkpoint_without_captions_falls_back_to_the_pokedex_in_one_line(tmp_path, capsys):
    plain = random_checkpoint(tmp_path / "plain.pt", seed=2)
    assert ckpt.load_checkpoint(plain, device="cpu").captions is None
    disc_on((30, 30), (0, 0, 0, 0)).save(tmp_path / "disc.png")
    assert main(["classify", str(tmp_path / "disc.png"), "--checkpoint", str(plain), "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["names_from"] == "pokedex" and json.loads(captured.out)["names"] == 1025
    said = [line for line in captured.err.splitlines() if "captions" in line]
    assert len(said) == 1 and "records no captions" in said[0] and "Pokedex" in said[0]

    # a damaged "captions" entry is ignored with one warning, never trusted
    saved = torch.load(plain, weights_only=True)
    saved["captions"] = ["红色圆形", 7]
    torch.save(saved, tmp_path / "odd.pt")
    assert ckpt.load_checkpoint(tmp_path / "odd.pt", device="cpu").captions is None
    assert "not a list of texts" in capsys.readouterr().err


# ---------------------------------------------------------------- trained checkpoints know their captions


def caption_picture(path, seed):
    """A distinct small picture per caption and view."""
    import random

    rng = random.Random(repr(seed))
    picture = Image.new("RGBA", (24, 24), (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((rng.randint(0, 6), rng.randint(0, 6), rng.randint(16, 23), rng.randint(16, 23)),
                                    fill=(rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255), 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


def runner_command(runner, *argv):
    return [sys.executable, str(runner), *map(str, argv)]


@pytest.mark.parametrize("source", ["any-names", "manifest"])
def test_training_records_the_captions_and_classify_and_evaluate_rank_them(runner, tmp_path, source):
    captions = ["红色圆形", "蓝色方块", "绿色三角", "黄色星星"]
    if source == "any-names":
        for index, caption in enumerate(captions):
            for view in range(3):
                caption_picture(tmp_path / "imgs" / caption / f"{view}.png", (index, view))
        built = ["--any-names", "--images", tmp_path / "imgs"]
    else:
        rows = ["path,caption"]
        for index, caption in enumerate(captions):
            for view in range(3):
                caption_picture(tmp_path / "photos" / f"{index}-{view}.png", (index, view))
                rows.append(f"photos/{index}-{view}.png,{caption}")
        rows.append("photos/0-0.png,一个红圈")  # a second caption of one picture: one group with 红色圆形
        captions.append("一个红圈")
        (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        built = ["--manifest", tmp_path / "captions.csv"]
    dataset = tmp_path / "ds"
    done = subprocess.run(runner_command(runner, "build-dataset", *built, "--out", dataset, "--image-size", "32",
                                         "--valid-fraction", "0.34", "--test-fraction", "0", "--workers", "1"),
                          env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    logs = tmp_path / "logs"
    # a batch of 8 over 4-5 captions: batches shrink, and upstream makes new loaders every epoch
    result = run(train_command(runner, dataset / "lmdb" / "train", logs, "--max-epochs", "2",
                               val_data=dataset / "lmdb" / "valid"))
    log = result.stdout + result.stderr
    for loader in ("training", "validation"):
        said = [line for line in log.splitlines() if "distinct texts for a global batch" in line and f"the {loader} loader" in line]
        assert len(said) == 1, (loader, said)  # once in the run, though each epoch made new loaders
    assert [m["epoch"] for m in read_metrics(logs) if m.get("epoch_end")] == [1, 2]

    checkpoint = logs / "run" / "checkpoints" / "epoch_latest.pt"
    assert sorted(torch.load(checkpoint, weights_only=True)["captions"]) == sorted(captions)
    picture = next((tmp_path / ("imgs/红色圆形" if source == "any-names" else "photos")).iterdir())
    done = subprocess.run(runner_command(runner, "classify", picture, "--checkpoint", checkpoint, "--device", "cpu",
                                         "--json", "--top-k", "10"),
                          env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["names_from"] == "checkpoint" and report["names"] == len(captions)
    assert sorted(p["name"] for p in report["results"][0]["predictions"]) == sorted(captions)  # no Pokemon at all
    assert "Pokedex" not in done.stderr

    done = subprocess.run(runner_command(runner, "evaluate", "--checkpoint", checkpoint, "--dataset", dataset,
                                         "--split", "valid", "--device", "cpu", "--json"),
                          env=cpu_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    evaluated = json.loads(done.stdout)
    assert evaluated["names_from"] == "checkpoint" and evaluated["names"] == len(captions)


# ---------------------------------------------------------------- groups are one answer


def test_evaluate_counts_any_caption_of_the_group_as_a_hit(checkpoint_with_captions, tmp_path, capsys):
    from cn_clip_pokemon.builder.build import build_dataset
    from cn_clip_pokemon.evaluation import evaluate

    for name in ("a", "b", "c"):
        caption_picture(tmp_path / f"{name}.png", name)
    # a.png is 红色圆形 and 一个红圈; b.png only 一个红圈, so the builder groups all three captions' pictures
    (tmp_path / "m.csv").write_text("path,caption\na.png,红色圆形\na.png,一个红圈\nb.png,一个红圈\nc.png,蓝色方块\n",
                                    encoding="utf-8")
    build_dataset(None, tmp_path / "ds", manifest=tmp_path / "m.csv", image_size=32, valid_fraction=0, test_fraction=0,
                  workers=1, progress=False)
    result = evaluate(checkpoint_with_captions, tmp_path / "ds", split="train", device="cpu", progress=False,
                      keep_scores=True, cache=False)
    scores = result["scores"]
    names = scores["names"]
    assert names[: len(NAMES)] == NAMES and set(names[len(NAMES):]) == {"一个红圈"}  # its captions, then the dataset's
    assert result["names_from"] == "checkpoint"
    by_source = {"a.png": 0, "b.png": 1, "c.png": 2}
    labels = [scores["labels"][scores["image_ids"].index(image_id)] for image_id in sorted(scores["image_ids"])]
    red = {names.index("红色圆形"), names.index("一个红圈")}
    assert labels[by_source["a.png"]] == red and labels[by_source["b.png"]] == red  # b: its group's caption too
    assert labels[by_source["c.png"]] == {names.index("蓝色方块")}
    assert result["pictures_with_several_captions"] == 2
    best = scores["probabilities"].argmax(dim=-1).tolist()
    hits = sum(predicted in wanted for predicted, wanted in zip(best, scores["labels"]))
    assert result["zero_shot"]["top1"] == pytest.approx(100 * hits / 3)
    assert not [m for m in result["worst"] if m["predicted"] in ("红色圆形", "一个红圈") and m["truth"] in ("红色圆形", "一个红圈")]

    assert main(["evaluate", "--checkpoint", str(checkpoint_with_captions), "--dataset", str(tmp_path / "ds"),
                 "--split", "train", "--device", "cpu"]) == 0
    assert "2 of 3 pictures have several right captions" in capsys.readouterr().out


# ---------------------------------------------------------------- quiet logs


def stderr_of(command, terminal):
    """stderr of ``command``: a pipe, or a pseudo-terminal when ``terminal``."""
    if not terminal:
        return subprocess.run(command, env=cpu_env(), capture_output=True, text=True, timeout=240).stderr
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    process = subprocess.Popen(command, env=cpu_env(), stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=240)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_only_on_a_terminal(checkpoint_with_captions, awkward_pictures, tmp_path):
    from cn_clip_pokemon.progress import shows_progress

    class Terminal:
        def isatty(self):
            return True

    assert shows_progress(stream=Terminal()) and not shows_progress(enabled=False, stream=Terminal())
    assert not shows_progress(stream=open(tmp_path / "log.txt", "w"))
    picture = str(awkward_pictures["透明黑底"][0])
    command = [sys.executable, "-m", "cn_clip_pokemon", "classify", picture, "--checkpoint", str(checkpoint_with_captions),
               "--device", "cpu", "--no-cache"]
    logged = stderr_of(command, terminal=False)
    assert "encoding names" not in logged and "\r" not in logged
    assert "encoding names" in stderr_of(command, terminal=True)


def test_caption_builds_say_how_they_split_and_warn_about_unseen_test_captions(tmp_path, capsys):
    for index, caption in enumerate(["红色圆形", "蓝色方块", "绿色三角", "黄色星星", "黑色线条", "白色云朵", "紫色花朵", "橙色月亮",
                                     "灰色石头", "粉色爱心"]):
        caption_picture(tmp_path / "flat" / f"{caption}.png", index)
    assert main(["build-dataset", "--any-names", "--images", str(tmp_path / "flat"), "--out", str(tmp_path / "ds"),
                 "--test-fraction", "0.2", "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "split by caption" in out and "split by pokemon" not in out
    assert "warning: 2 of 2 test captions never occur in training" in out

    # several pictures per caption, split by view: every test caption is trained on, no warning
    for index in range(3):
        for view in range(3):
            caption_picture(tmp_path / "folders" / f"说明{index}" / f"{view}.png", (index, view))
    assert main(["build-dataset", "--any-names", "--images", str(tmp_path / "folders"), "--out", str(tmp_path / "ds2"),
                 "--test-fraction", "0.34", "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "split by view" in out and "never occur in training" not in out

    # forgetting --any-names: the error names both ways to give captions
    assert main(["build-dataset", "--images", str(tmp_path / "flat"), "--out", str(tmp_path / "ds3"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "--any-names" in error and "--manifest" in error and "Traceback" not in error


# ---------------------------------------------------------------- upstream's tools and the builder


def test_a_rebuild_keeps_what_upstreams_feature_extraction_wrote(checkpoint_with_captions, tmp_path):
    """Upstream's extract_features, run as its README shows (no output paths), writes
    {split}_imgs.img_feat.jsonl and {split}_texts.txt_feat.jsonl into the dataset folder; build-dataset
    then rebuilds the dataset and keeps them as they were (and a file of the user's)."""
    from conftest import EXTRACT_FEATURES, run_upstream_tool

    for index, caption in enumerate(["红色圆形", "蓝色方块", "绿色三角", "黄色星星"]):
        for view in range(2):
            caption_picture(tmp_path / "imgs" / caption / f"{view}.png", (index, view))
    dataset = tmp_path / "ds"
    build = ["build-dataset", "--any-names", "--images", str(tmp_path / "imgs"), "--out", str(dataset),
             "--image-size", str(RESOLUTION), "--test-fraction", "0.5", "--valid-fraction", "0", "--workers", "1",
             "--no-progress"]
    assert main(build) == 0
    run_upstream_tool(
        EXTRACT_FEATURES,
        ["--extract-image-feats", "--extract-text-feats", "--image-data", dataset / "lmdb" / "test" / "imgs",
         "--text-data", dataset / "test_texts.jsonl", "--img-batch-size", 4, "--text-batch-size", 4,
         "--context-length", 52, "--resume", checkpoint_with_captions, "--vision-model", "ViT-T-8-64",
         "--text-model", "RBT-Tiny-chinese"],
        cwd=tmp_path, CUDA_VISIBLE_DEVICES="",
    )
    (dataset / "NOTES.md").write_text("what I ran on this dataset\n", encoding="utf-8")  # and the user's own file
    outputs = {name: (dataset / name).read_bytes()
               for name in ("test_imgs.img_feat.jsonl", "test_texts.txt_feat.jsonl", "NOTES.md")}
    assert all(outputs.values())

    for _ in range(2):  # rebuilt, and rebuilt again
        assert main(build) == 0
        assert {name: (dataset / name).read_bytes() for name in outputs} == outputs
    # the dataset itself is the new build's, and upstream's reader reads it
    from cn_clip.training.data import LMDBDataset

    assert len(LMDBDataset(str(dataset / "lmdb" / "train"), split="train")) > 0
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".ds.")]  # no leftovers beside it
