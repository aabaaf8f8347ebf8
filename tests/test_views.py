"""--views turns: every door shows the model the same views of a picture (the picture as it is, turned 15
degrees either way, each also at 85% of its size) and averages their zero-shot probabilities the same way;
searches rank by their weighted mean embedding. The default, one view, is what it always was."""
import json

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from PIL import Image, ImageDraw  # noqa: E402

from cn_clip_pokemon.checkpoint import load_checkpoint  # noqa: E402
from cn_clip_pokemon.classify import Classifier  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.encoding import encode_pictures  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from cn_clip_pokemon.images import PicturePreprocess, square_picture  # noqa: E402
from cn_clip_pokemon.views import VIEWS  # noqa: E402
from conftest import random_checkpoint  # noqa: E402

WHITE = (255, 255, 255)
RESOLUTION = 64  # the tests' tiny registered architecture, ViT-T-8-64


def sprite():
    """48 x 48, transparent around a 30 x 30 drawing that is not the same turned: a red block, a blue bar
    along its top and a green foot at its bottom left."""
    image = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((9, 9, 38, 38), fill=(200, 30, 30, 255))
    draw.rectangle((9, 9, 38, 14), fill=(30, 60, 220, 255))
    draw.rectangle((9, 30, 18, 38), fill=(30, 170, 60, 255))
    return image


def test_views_of_gives_the_picture_first_then_its_turns_and_smaller_views():
    preprocess = PicturePreprocess(RESOLUTION, "subject", "turns")
    views = preprocess.views_of(sprite())
    assert views.shape == (len(VIEWS["turns"]), 3, RESOLUTION, RESOLUTION) == (6, 3, RESOLUTION, RESOLUTION)
    assert torch.equal(views[0], preprocess(sprite()))  # the picture as it is, as one view shows it
    assert PicturePreprocess(RESOLUTION, "subject").views_of(sprite()).shape == (1, 3, RESOLUTION, RESOLUTION)
    white = preprocess.transform(Image.new("RGB", (RESOLUTION, RESOLUTION), WHITE))
    edge = RESOLUTION * 7 // 100  # an 85% view is centred: 7.5% of white on each side
    for index, (degrees, size) in enumerate(VIEWS["turns"]):
        border = torch.cat([views[index][:, :edge].flatten(1), views[index][:, -edge:].flatten(1),
                            views[index][:, :, :edge].flatten(1), views[index][:, :, -edge:].flatten(1)], dim=1)
        white_border = white[:, :1, :1].flatten(1).expand_as(border)
        assert torch.allclose(border, white_border, atol=1e-5) == (size < 1), (degrees, size)
        assert (degrees == 0 and size == 1.0) == torch.equal(views[index], views[0])
    assert preprocess.view_weights.tolist() == pytest.approx([2 / 7] + [1 / 7] * 5)
    assert "views='turns'" in repr(preprocess) and "views" not in repr(PicturePreprocess(RESOLUTION))


def test_a_turned_view_undoes_a_turn_of_the_picture():
    preprocess = PicturePreprocess(RESOLUTION, "subject", "turns")
    original = preprocess(sprite())
    turned = preprocess.views_of(sprite().rotate(15, resample=Image.Resampling.BICUBIC, expand=True))
    distance = [float((view - original).abs().mean()) for view in turned[:3]]  # as it is, -15, +15 degrees
    assert VIEWS["turns"][1] == (-15, 1.0)
    assert distance[1] < 0.5 * distance[0] and distance[1] < 0.5 * distance[2], distance


def test_a_stored_picture_and_its_original_give_the_same_views():
    # evaluate and search read the builder's stored square, classify and the page open the file
    preprocess = PicturePreprocess(RESOLUTION, "subject", "turns")
    stored = square_picture(sprite(), RESOLUTION, "subject")
    assert preprocess.as_stored().framing == "as-is" and preprocess.as_stored().views == "turns"
    assert torch.equal(preprocess.as_stored().views_of(stored), preprocess.views_of(sprite()))


@pytest.fixture(scope="module")
def framed_checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("views") / "epoch_latest.pt", seed=3, framing="subject",
                             captions=["红色方块", "蓝色横条", "绿色脚", "皮卡丘"])


def test_classify_averages_the_views_probabilities_the_picture_counted_twice(framed_checkpoint):
    loaded = load_checkpoint(framed_checkpoint, device="cpu", views="turns")
    classifier = Classifier(framed_checkpoint, loaded=loaded, cache=False, progress=False)
    embeddings = encode_pictures(loaded, [sprite(), sprite().rotate(90)], progress=False)
    assert embeddings.shape[:2] == (2, 6)
    got = classifier.probabilities(embeddings)
    # the same, step by step: each view through the model, its own softmax, a weighted mean
    with torch.inference_mode():
        for row, picture in enumerate([sprite(), sprite().rotate(90)]):
            features = loaded.model.encode_image(loaded.preprocess.views_of(picture)).float()
            features = features / features.norm(dim=-1, keepdim=True)
            per_view = (loaded.model.logit_scale.exp() * features @ classifier.name_embeddings.T).softmax(dim=-1)
            assert torch.allclose(got[row], (2 * per_view[0] + per_view[1:].sum(dim=0)) / 7, atol=1e-5)
    one = Classifier(framed_checkpoint, loaded=load_checkpoint(framed_checkpoint, device="cpu"), cache=False, progress=False)
    alone = one.probabilities(encode_pictures(one.loaded, [sprite()], progress=False))
    assert alone.shape == got[:1].shape and not torch.allclose(alone, got[:1], atol=1e-4)


def test_an_unknown_choice_is_refused_before_loading(framed_checkpoint, capsys):
    with pytest.raises(UserError, match="views must be one of one, turns, not 'many'"):
        load_checkpoint("no-such-file.pt", views="many")
    assert main(["classify", str(framed_checkpoint), "--checkpoint", str(framed_checkpoint), "--views", "many"]) == 2
    assert "invalid choice: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["classify", "search", "evaluate", "serve"])
def test_every_door_that_loads_a_checkpoint_takes_views(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "--views {one,turns}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def framed_dataset(sprite_pictures, tmp_path_factory):
    from cn_clip_pokemon.builder.build import build_dataset

    out = tmp_path_factory.mktemp("views-dataset") / "pokemon"
    build_dataset(sprite_pictures, out, image_size=RESOLUTION, framing="subject", split_by="view", seed=0, progress=False)
    return out


def test_evaluate_classify_and_search_give_one_answer_with_views(framed_checkpoint, framed_dataset, sprite_pictures, capsys):
    from cn_clip_pokemon.dataset_split import SplitPictures
    from cn_clip_pokemon.evaluation import evaluate
    from cn_clip_pokemon.search import search

    assert main(["evaluate", "--checkpoint", str(framed_checkpoint), "--dataset", str(framed_dataset), "--device", "cpu",
                 "--views", "turns", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    loaded = load_checkpoint(framed_checkpoint, device="cpu", views="turns")
    scores = evaluate(framed_checkpoint, framed_dataset, loaded=loaded, progress=False, keep_scores=True)["scores"]
    assert scores["image_embeddings"].shape[1] == 6  # read back from the cache the command wrote
    with SplitPictures(framed_dataset, "test") as pictures:
        files = [sprite_pictures / pictures.source(image_id) for image_id in scores["image_ids"][:12]]
    classifier = Classifier(framed_checkpoint, names=scores["names"], loaded=loaded, cache=False, progress=False)
    by_file = classifier.classify_paths(files, top_k=1)
    for row, result in enumerate(by_file):  # the original file, framed by the door: the split's stored picture
        best = int(scores["probabilities"][row].argmax())
        assert result["predictions"][0]["name"] == scores["names"][best]
        assert result["predictions"][0]["probability"] == pytest.approx(float(scores["probabilities"][row, best]), abs=1e-5)
    plain = evaluate(framed_checkpoint, framed_dataset, device="cpu", progress=False, keep_scores=True)["scores"]
    hits = sum(bool(wanted & {int(p.argmax())}) for p, wanted in zip(scores["probabilities"], scores["labels"]))
    assert printed["zero_shot"]["top1"] == pytest.approx(hits * 100.0 / len(scores["labels"]))
    assert plain["image_embeddings"].dim() == 2  # one view: the embeddings and scores of every earlier release
    assert not torch.allclose(plain["probabilities"], scores["probabilities"], atol=1e-4)
    # search by a picture of the split: its own copy first, at cosine 1 (the same views, the same mean)
    found = search(framed_checkpoint, framed_dataset, image=files[0], loaded=loaded, progress=False, top_k=3)
    assert found["results"][0]["image_id"] == scores["image_ids"][0]
    assert found["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    # the page: its classify and search answer as the commands do (its split's views averaged once, when encoded)
    from cn_clip_pokemon.serve import PokedexService

    service = PokedexService(framed_checkpoint, dataset=framed_dataset, names=scores["names"], device="cpu",
                             progress=False, views="turns")
    try:
        assert service.embeddings.dim() == 2
        page = service.classify_upload(str(files[0]))[0]
        assert (page["name"], page["probability"]) == (by_file[0]["predictions"][0]["name"],
                                                       pytest.approx(by_file[0]["predictions"][0]["probability"], abs=1e-6))
        query = scores["names"][0]
        on_page = [result["score"] for result in service.search_text(query, top_k=5)["results"]]
        by_command = [result["score"] for result in search(framed_checkpoint, framed_dataset, query=query, loaded=loaded,
                                                           progress=False, top_k=5)["results"]]
        assert on_page == pytest.approx(by_command, abs=1e-6)
    finally:
        service.close()
    # the split's embeddings of one view and of six are two entries of the cache, neither read for the other
    cached = sorted((framed_checkpoint.parent / f"{framed_checkpoint.name}.cache").glob("pictures-test-*.pt"))
    assert sorted(torch.load(path)["embeddings"].dim() for path in cached) == [2, 3]
