"""evaluate: numbers agree with upstream's own scorers on the same predictions; definitions hold."""
import json
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from PIL import Image  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.dataset_format import safe_pair_loads  # noqa: E402
from cn_clip_pokemon.evaluation import evaluate, recall_at_k  # noqa: E402
from cn_clip_pokemon.zero_shot import ranked, top_k_accuracy  # noqa: E402
from conftest import random_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """ViT-T-8-64@RBT-Tiny-chinese with random weights (64 px, the sprite dataset's size)."""
    return random_checkpoint(tmp_path_factory.mktemp("eval") / "epoch_latest.pt", seed=3)


@pytest.fixture(scope="module")
def evaluated(tiny_checkpoint, sprite_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluated")
    result = evaluate(
        tiny_checkpoint,
        sprite_dataset,
        split="test",
        device="cpu",
        out=folder / "worst.png",
        predictions_dir=folder / "predictions",
        keep_scores=True,
        progress=False,
    )
    return result, folder


def upstream_style_predictions(checkpoint, dataset, split, k=10):
    """Top-k predictions made the way upstream's eval pipeline does, from upstream's own reader:
    pictures through cn_clip's LMDBDataset, texts through tokenize, then make_topk_predictions'
    ranking (python sorted over inner products, best first)."""
    from cn_clip.clip import tokenize
    from cn_clip.eval.data import _preprocess_text
    from cn_clip.training.data import LMDBDataset

    model, _ = ckpt.load_model(checkpoint, device="cpu")
    reader = LMDBDataset(str(dataset / "lmdb" / split), split="val", max_txt_length=52, resolution=64)
    images = {}
    for index in range(reader.number_samples):
        image, _, _ = reader[index]
        image_id = safe_pair_loads(reader.txn_pairs.get(str(index).encode()), f"pair {index}")[0]
        images.setdefault(image_id, image)
    image_ids = sorted(images)
    texts = [json.loads(line) for line in (dataset / f"{split}_texts.jsonl").read_text(encoding="utf-8").splitlines()]
    with torch.no_grad():
        image_features = model.encode_image(torch.stack([images[i] for i in image_ids]))
        text_features = model.encode_text(tokenize([_preprocess_text(t["text"]) for t in texts], context_length=52))
    image_features = (image_features / image_features.norm(dim=-1, keepdim=True)).tolist()
    text_features = (text_features / text_features.norm(dim=-1, keepdim=True)).tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    t2i = {}
    for entry, feature in zip(texts, text_features):
        scored = sorted(((image_id, dot(feature, f)) for image_id, f in zip(image_ids, image_features)), key=lambda x: x[1], reverse=True)
        t2i[entry["text_id"]] = [image_id for image_id, _ in scored[:k]]
    i2t = {}
    for image_id, feature in zip(image_ids, image_features):
        scored = sorted(((t["text_id"], dot(feature, f)) for t, f in zip(texts, text_features)), key=lambda x: x[1], reverse=True)
        i2t[image_id] = [text_id for text_id, _ in scored[:k]]
    return t2i, i2t


def test_recall_matches_upstream_evaluation_scripts(evaluated, tiny_checkpoint, sprite_dataset, tmp_path):
    from cn_clip.eval import evaluation as upstream_t2i
    from cn_clip.eval import evaluation_tr as upstream_i2t

    result, folder = evaluated
    predictions = folder / "predictions"
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert result["pictures"] == info["splits"]["test"]["images"] >= 10  # upstream's scorer needs 10
    assert result["texts"] == info["splits"]["test"]["texts"] >= 10
    assert result["names"] == len(info["names"])

    # upstream scores our prediction files ...
    mean, r1, r5, r10 = upstream_t2i.compute_score(str(predictions / "test_texts.jsonl"), str(predictions / "test_predictions.jsonl"))
    ours = result["text_to_image"]
    assert (ours["mean_recall"], ours["r1"], ours["r5"], ours["r10"]) == pytest.approx((mean, r1, r5, r10))

    # ... against the image->text ground truth made by upstream's own converter
    gold = tmp_path / "test_texts.jsonl"
    shutil.copy(sprite_dataset / "test_texts.jsonl", gold)
    subprocess.run([sys.executable, "-m", "cn_clip.eval.transform_ir_annotation_to_tr", "--input", str(gold)], check=True, capture_output=True)
    upstream_gold = {json.loads(l)["image_id"]: sorted(json.loads(l)["text_ids"]) for l in open(tmp_path / "test_texts.tr.jsonl")}
    our_gold = {json.loads(l)["image_id"]: sorted(json.loads(l)["text_ids"]) for l in open(predictions / "test_texts.tr.jsonl")}
    assert our_gold == upstream_gold
    mean, r1, r5, r10 = upstream_i2t.compute_score(str(tmp_path / "test_texts.tr.jsonl"), str(predictions / "test_tr_predictions.jsonl"))
    ours = result["image_to_text"]
    assert (ours["mean_recall"], ours["r1"], ours["r5"], ours["r10"]) == pytest.approx((mean, r1, r5, r10))

    # and the predictions themselves are those of upstream's pipeline (its LMDB reader, its ranking)
    t2i, i2t = upstream_style_predictions(tiny_checkpoint, sprite_dataset, "test")
    ours_t2i = {json.loads(l)["text_id"]: json.loads(l)["image_ids"] for l in open(predictions / "test_predictions.jsonl")}
    ours_i2t = {json.loads(l)["image_id"]: json.loads(l)["text_ids"] for l in open(predictions / "test_tr_predictions.jsonl")}
    assert ours_t2i == t2i
    assert ours_i2t == i2t


def upstream_accuracy(output, target, topk):
    """cn_clip.eval.zeroshot_evaluation.accuracy: called as is when it runs; its last line calls
    float() on a 1-element array, which numpy >= 2 refuses, so then the same lines with .item()."""
    from cn_clip.eval.zeroshot_evaluation import accuracy

    try:
        return accuracy(output, target, topk=topk)
    except TypeError:
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0).item() for k in topk]


def test_zero_shot_is_really_top5_and_matches_upstream_accuracy(evaluated):
    result, _ = evaluated
    scores = result["scores"]
    probabilities = scores["probabilities"]
    # every picture against the full name set, not only the names of the test split
    assert probabilities.shape == (result["pictures"], result["names"]) and result["names"] > result["texts"]
    target = torch.tensor([next(iter(label)) for label in scores["labels"]])
    top1, top5 = upstream_accuracy(probabilities, target, topk=(1, 5))
    assert result["zero_shot"]["top1"] == pytest.approx(top1 * 100 / result["pictures"])
    assert result["zero_shot"]["top5"] == pytest.approx(top5 * 100 / result["pictures"])
    assert result["zero_shot"]["top5"] >= result["zero_shot"]["top1"]


def test_worst_confusions_grid_and_list(evaluated):
    result, folder = evaluated
    worst = result["worst"]
    wrong = result["pictures"] - round(result["zero_shot"]["top1"] * result["pictures"] / 100)
    assert len(worst) == min(16, wrong)
    gaps = [m["predicted_probability"] - m["truth_probability"] for m in worst]
    assert gaps == sorted(gaps, reverse=True) and all(gap >= 0 for gap in gaps)
    assert all(m["truth"] != m["predicted"] and m["truth_rank"] > 1 for m in worst)
    if worst:
        with Image.open(folder / "worst.png") as grid:
            assert grid.format == "PNG"


def test_recall_counts_every_positive():
    # 2 text queries over 4 pictures: text 0 has pictures {0, 1}, text 1 has {3}
    similarity = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.7, 0.6]])
    top = ranked(similarity, 10)
    assert top.tolist() == [[1, 2, 3, 0], [0, 2, 3, 1]]
    scores = recall_at_k(top, [{0, 1}, {3}], ks=(1, 2, 3))
    # text 0: its second picture (1) ranks first -> a hit at 1; text 1: picture 3 ranks third
    assert (scores["r1"], scores["r2"], scores["r3"]) == (50.0, 50.0, 100.0)
    # ties keep index order, as upstream's stable sort does
    assert ranked(torch.tensor([[0.5, 0.5, 0.9, 0.5]]), 4).tolist() == [[2, 0, 1, 3]]
    accuracy = top_k_accuracy(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]), [{0}], ks=(1, 5, 6))
    assert accuracy == {"top1": 0.0, "top5": 0.0, "top6": 100.0}


def test_without_dataset_info_the_names_are_all_texts(evaluated, tiny_checkpoint, sprite_dataset, tmp_path):
    result, _ = evaluated
    bare = tmp_path / "bare"
    shutil.copytree(sprite_dataset, bare)
    (bare / "dataset_info.json").unlink()
    fallback = evaluate(tiny_checkpoint, bare, split="test", device="cpu", progress=False)
    # the texts of all splits are the names (template "{}"), so the answers are the same
    assert fallback["names"] == result["names"]
    assert fallback["zero_shot"] == pytest.approx(result["zero_shot"])
    assert fallback["text_to_image"] == pytest.approx(result["text_to_image"])


def test_evaluate_command_json_and_text(tiny_checkpoint, sprite_dataset, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--split", "valid", "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert report["split"] == "valid" and report["pictures"] == info["splits"]["valid"]["images"]
    assert set(report["text_to_image"]) == {"r1", "r5", "r10", "mean_recall", "queries"}
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--split", "valid", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "zero-shot      top-1" in text and "text->image" in text and "image->text" in text


def test_worst_mistakes_name_their_picture_files(evaluated, sprite_dataset):
    result, _ = evaluated
    info = json.loads((sprite_dataset / "dataset_info.json").read_text(encoding="utf-8"))
    assert result["worst"]
    for mistake in result["worst"]:
        entry = info["images"][str(mistake["image_id"])]
        assert mistake["picture"] == entry["source"] and mistake["truth"] == entry["name"]


def test_evaluate_worst_n_lists_n_mistakes_by_file_name(evaluated, tiny_checkpoint, sprite_dataset, tmp_path, capsys):
    result, _ = evaluated
    wrong = result["pictures"] - round(result["zero_shot"]["top1"] * result["pictures"] / 100)
    assert wrong >= 7  # random weights: most of the test split is wrong
    grid = tmp_path / "worst.png"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--device", "cpu",
                 "--worst", "7", "--out", str(grid)]) == 0
    text = capsys.readouterr().out.splitlines()
    listed = text[text.index("  most confident mistakes:") + 1 :]
    assert len(listed) == 7
    for line, mistake in zip(listed, result["worst"]):
        assert line.startswith(f"    {mistake['picture']} (picture {mistake['image_id']}): said {mistake['predicted']} ")
    with Image.open(grid) as sheet:  # 7 cells: 3 columns, 3 rows
        assert sheet.width == 3 * (128 + 12)

    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--device", "cpu", "--worst", "0"]) == 0
    assert "most confident mistakes" not in capsys.readouterr().out


def test_evaluate_takes_the_model_options_of_classify(evaluated, tiny_checkpoint, sprite_dataset, capsys, monkeypatch):
    from cn_clip.clip.model import CLIP

    result, _ = evaluated  # its picture embeddings are in the cache now
    batches = []
    encode_image = CLIP.encode_image

    def counting(self, images, *args, **kwargs):
        batches.append(len(images))
        return encode_image(self, images, *args, **kwargs)

    monkeypatch.setattr(CLIP, "encode_image", counting)
    base = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--dataset", str(sprite_dataset), "--device", "cpu", "--json"]
    assert main(base + ["--vision-model", "ViT-T-8-64", "--text-model", "RBT-Tiny-chinese", "--batch-size", "7", "--no-cache"]) == 0
    given = json.loads(capsys.readouterr().out)
    # --no-cache encodes every picture again, --batch-size 7 at a time; the names given are the
    # checkpoint's own architecture, so the numbers are those of the plain evaluation
    assert result["pictures"] > 7 and sum(batches) == result["pictures"] and max(batches) == 7
    for key in ("pictures", "names", "zero_shot", "text_to_image", "image_to_text"):
        assert given[key] == pytest.approx(result[key]), key
    monkeypatch.undo()
    # the names really reach the loader: a text config given as the vision model is refused
    assert main(base + ["--vision-model", "RBT-Tiny-chinese"]) == 1
    assert "is a text config" in capsys.readouterr().err
