"""Every checkpoint shape loads to the exact same model; bad files fail with a clear one-liner."""
import os
import socket

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip import tokenize  # noqa: E402
from cn_clip.clip.model import CLIP, convert_state_dict, convert_weights  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon import model_config_resolver as resolver  # noqa: E402
from cn_clip_pokemon.checkpoint_files import file_digest  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from conftest import random_checkpoint  # noqa: E402

# A CLIP small enough to build in a blink; vocab_size stays 21128 (cn_clip's tokenizer is fixed).
# Heads are 64 wide, as upstream's are, so the architecture can be read back from shapes alone.
TINY = dict(
    embed_dim=32,
    image_resolution=32,
    vision_layers=2,
    vision_width=64,
    vision_patch_size=8,
    vocab_size=21128,
    text_attention_probs_dropout_prob=0.1,
    text_hidden_act="gelu",
    text_hidden_dropout_prob=0.1,
    text_hidden_size=64,
    text_initializer_range=0.02,
    text_intermediate_size=128,
    text_max_position_embeddings=64,
    text_num_attention_heads=1,
    text_num_hidden_layers=2,
    text_type_vocab_size=2,
)
TINY_CONFIG = {"vision_model": None, "text_model": None, "input_resolution": 32, "model_info": TINY}


def outputs(model, resolution=32):
    generator = torch.Generator().manual_seed(7)
    images = torch.randn(3, 3, resolution, resolution, generator=generator)
    texts = tokenize(["皮卡丘", "一张喷火龙的图片", "mew"])
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts), model.logit_scale.detach().clone()


def assert_same_outputs(model, reference, resolution=32):
    got, want = outputs(model, resolution), outputs(reference, resolution)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = CLIP(**TINY)
    # logit_scale off its initial value, so a reload that lost it would show
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    return model.eval()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_like_upstream_training(model, path):
    """What cn_clip.training.main writes: a DDP-wrapped model after an optimizer step."""
    import copy

    import torch.distributed as dist

    trained = copy.deepcopy(model).train()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(trained)
        optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
        images, texts = torch.randn(2, 3, 32, 32), tokenize(["皮卡丘", "妙蛙种子"])
        image_features, text_features, scale = ddp(images, texts)
        (-(scale * image_features @ text_features.T).diagonal().mean()).backward()
        optimizer.step()
        torch.save(
            {"epoch": 1, "step": 1, "name": "tiny", "state_dict": ddp.state_dict(), "optimizer": optimizer.state_dict()},
            path,
        )
    finally:
        dist.destroy_process_group()
    return trained.eval()


def test_our_checkpoint_reloads_exactly(tiny_model, tmp_path):
    path = ckpt.save_model(tiny_model, tmp_path / "ours.pt", TINY_CONFIG, epoch=3, step=9)
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["model_config"]["model_info"] == TINY
    assert all(key.startswith("module.") for key in raw["state_dict"])
    model, preprocess = ckpt.load_model(path, device="cpu")
    assert_same_outputs(model, tiny_model)
    assert not model.training
    assert preprocess.transforms[0].size == (32, 32)
    # no temporary file left behind by the atomic write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.pt"]


def test_upstream_training_checkpoint_with_ddp_keys(tiny_model, tmp_path):
    path = tmp_path / "epoch_latest.pt"
    trained = save_like_upstream_training(tiny_model, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"epoch", "step", "name", "state_dict", "optimizer"}
    assert next(iter(saved["state_dict"])).startswith("module.")
    model, _ = ckpt.load_model(path, device="cpu")
    assert_same_outputs(model, trained)
    # the optimizer step changed the weights: the reload really read the new ones
    assert not torch.equal(outputs(model)[0], outputs(tiny_model)[0])


@pytest.mark.parametrize("shape", ["raw", "raw_module", "flash_attention", "pretrained_release"])
def test_other_shapes_reload_exactly(tiny_model, tmp_path, shape):
    import copy

    reference = tiny_model
    plain = tiny_model.state_dict()
    if shape == "raw":
        saved = plain
    elif shape == "raw_module":
        saved = {"module." + key: value for key, value in plain.items()}
    elif shape == "flash_attention":
        # upstream's converter turns standard keys into FlashAttention's Wqkv layout
        saved = {"epoch": 1, "step": 1, "state_dict": convert_state_dict({"module." + k: v.clone() for k, v in plain.items()})}
        assert any(".attn.Wqkv." in key for key in saved["state_dict"])
        assert any(".attention.self.Wqkv." in key for key in saved["state_dict"])
    else:
        # the official release layout: {"state_dict"} in fp16 with DDP keys
        half = copy.deepcopy(tiny_model)
        convert_weights(half)
        saved = {"state_dict": {"module." + k: v for k, v in half.state_dict().items()}}
        assert saved["state_dict"]["module.visual.conv1.weight"].dtype == torch.float16
        reference = half.float()
    torch.save(saved, tmp_path / "model.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "model.pt", device="cpu")
    assert loaded.model_config["model_info"]["vision_layers"] == 2
    assert loaded.model_config["input_resolution"] == 32
    assert_same_outputs(loaded.model, reference)


def test_registered_tiny_configs_are_named_from_shapes(tmp_path):
    info = resolver.model_info_for("ViT-T-8-64", "RBT-Tiny-chinese")
    torch.manual_seed(1)
    model = CLIP(**info).eval()
    torch.save(model.state_dict(), tmp_path / "raw.pt")
    loaded = ckpt.load_checkpoint(tmp_path / "raw.pt", device="cpu")
    assert (loaded.model_config["vision_model"], loaded.model_config["text_model"]) == ("ViT-T-8-64", "RBT-Tiny-chinese")
    assert loaded.model_config["model_info"] == info
    assert_same_outputs(loaded.model, model, resolution=64)


def test_malicious_pickle_is_refused_and_never_runs(tiny_model, tmp_path, capsys):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny_model.state_dict(), "extra": Payload()}, path)
    with pytest.raises(UserError) as error:
        ckpt.load_model(path, device="cpu")
    assert "refusing" in str(error.value) and str(path) in str(error.value)
    assert "system" in str(error.value)
    assert not marker.exists()

    # the same through the command line: exit 1, one line, no traceback, payload still not run
    from PIL import Image

    from cn_clip_pokemon.cli import main

    picture = tmp_path / "p.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(picture)
    capsys.readouterr()
    code = main(["classify", str(picture), "--checkpoint", str(path), "--names", "皮卡丘", "雷丘"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.startswith("cn-clip-pokemon: error: refusing to load")
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "text", "empty", "png"])
def test_damaged_or_foreign_files_fail_in_one_line(tiny_model, tmp_path, damage):
    good = ckpt.save_model(tiny_model, tmp_path / "good.pt", TINY_CONFIG)
    path = tmp_path / "bad.pt"
    if damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        from PIL import Image

        Image.new("RGB", (4, 4)).save(path, format="PNG")
    with pytest.raises(UserError) as error:
        ckpt.load_model(path, device="cpu")
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def test_not_a_clip_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, tmp_path / "linear.pt")
    with pytest.raises(UserError, match="does not look like a Chinese-CLIP checkpoint"):
        ckpt.load_model(tmp_path / "linear.pt", device="cpu")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list"):
        ckpt.load_model(tmp_path / "list.pt", device="cpu")


def test_mismatched_keys_are_listed_grouped_never_loaded_loosely(tiny_model, tmp_path):
    # a block lost from the middle (the layer count still agrees with the config)
    state = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("visual.transformer.resblocks.0.")}
    state["visual.extra_head.weight"] = torch.zeros(2)
    torch.save({"model_config": TINY_CONFIG, "state_dict": state}, tmp_path / "edited.pt")
    with pytest.raises(UserError) as error:
        ckpt.load_model(tmp_path / "edited.pt", device="cpu")
    message = str(error.value)
    assert "missing from the file, 12 keys: visual.transformer.resblocks.0.* (12 keys)" in message
    assert "unexpected in the file, 1 keys: visual.extra_head.weight" in message
    assert "likely cause" in message

    # forcing the wrong architecture names: sizes differ, reported as such
    ckpt.save_model(tiny_model, tmp_path / "tiny.pt", TINY_CONFIG)
    with pytest.raises(UserError) as error:
        ckpt.load_model(tmp_path / "tiny.pt", device="cpu", vision_model="ViT-T-8-64", text_model="RBT-Tiny-chinese")
    message = str(error.value)
    assert "ViT-T-8-64@RBT-Tiny-chinese" in message
    layers = resolver.read_model_config("ViT-T-8-64")["vision_layers"]  # the tiny file has 2 blocks
    missing = 12 * (layers - 2)
    assert f"missing from the file, {missing} keys: visual.transformer.resblocks.{{2..{layers - 1}}}.* ({missing} keys)" in message
    assert "different shapes, 70 tensors: text_projection (64, 32) vs model (128, 256)" in message
    assert "sizes and layer counts differ" in message


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        ckpt.load_model(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="unknown model config 'ViT-Q-1'"):
        resolver.model_info_for("ViT-Q-1", "RBT3-chinese")
    with pytest.raises(UserError, match="is a text config"):
        resolver.model_info_for("RBT3-chinese", "RBT3-chinese")


def test_pretrained_name_not_found_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DATAPATH", raising=False)
    with pytest.raises(UserError) as error:
        ckpt.load_model("ViT-B-16", download_root=str(tmp_path))
    assert "clip_cn_vit-b-16.pt" in str(error.value) and str(tmp_path) in str(error.value)


def test_vit_runs_at_another_resolution(tiny_model, tmp_path):
    ckpt.save_model(tiny_model, tmp_path / "tiny.pt", TINY_CONFIG)
    loaded = ckpt.load_checkpoint(tmp_path / "tiny.pt", device="cpu", input_resolution=48)
    assert loaded.model.visual.positional_embedding.shape[0] == (48 // 8) ** 2 + 1
    assert loaded.preprocess.transforms[0].size == (48, 48)
    image_features, _, _ = outputs(loaded.model, resolution=48)
    assert torch.isfinite(image_features).all()


def test_file_digest_is_remembered_until_the_file_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    first = file_digest(path, memo_dir=tmp_path / "memo")
    assert file_digest(path, memo_dir=tmp_path / "memo") == first
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(1, 1))
    assert file_digest(path, memo_dir=tmp_path / "memo") != first


@pytest.fixture(scope="module")
def rn50_files(tmp_path_factory):
    """RN50@RBT3-chinese, upstream's cheapest named architecture: ours and its release layout."""
    folder = tmp_path_factory.mktemp("rn50")
    ours = random_checkpoint(folder / "epoch_latest.pt", "RN50", "RBT3-chinese", seed=2)
    release = random_checkpoint(folder / "clip_cn_rn50.pt", "RN50", "RBT3-chinese", seed=2, release=True)  # the same weights
    return ours, release


def test_upstream_load_from_name_reads_our_checkpoint(rn50_files, capsys):
    from cn_clip.clip.utils import load_from_name

    ours, release = rn50_files
    upstream_model, upstream_preprocess = load_from_name(
        str(ours), device="cpu", vision_model_name="RN50", text_model_name="RBT3-chinese", input_resolution=224
    )
    upstream_model.eval()  # load_from_name leaves the model in training mode (BatchNorm, dropout)
    saved = torch.load(ours, weights_only=True)["state_dict"]
    upstream_state = upstream_model.state_dict()
    assert set(upstream_state) == {key[len("module."):] for key in saved}
    for key, value in upstream_state.items():
        # upstream builds its model in fp16 before loading, so its weights are ours rounded
        original = saved["module." + key]
        assert torch.equal(value, original) or torch.equal(value, original.half().float()), key

    # our loader, given upstream's pretrained name, finds the release file and builds the same model
    loaded = ckpt.load_checkpoint("RN50", device="cpu", download_root=str(release.parent))
    assert loaded.path == release
    assert (loaded.model_config["vision_model"], loaded.model_config["text_model"]) == ("RN50", "RBT3-chinese")
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(1, 3, 224, 224, generator=generator)
    texts = tokenize(["皮卡丘"])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), upstream_model.encode_image(images))
        assert torch.equal(loaded.model.encode_text(texts), upstream_model.encode_text(texts))

    # and the ResNet layout is recognised from shapes alone
    inferred = resolver.infer_model_info(ckpt.normalize_state_dict(torch.load(release, weights_only=True)["state_dict"]))
    assert (inferred["vision_model"], inferred["text_model"]) == ("RN50", "RBT3-chinese")
    assert inferred["model_info"]["vision_layers"] == [3, 4, 6, 3]


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda info: info.pop("image_resolution"), "lacks image_resolution"),
        (lambda info: info.update(vision_width="64"), "vision_width='64'"),
        (lambda info: info.update(text_num_hidden_layers=0), "text_num_hidden_layers=0"),
        (lambda info: info.update(tokenizer="bert"), "does not take (tokenizer)"),
        (lambda info: info.update(vision_layers=10**9), "vision_layers=1000000000 but the file holds 2"),
        (lambda info: info.update(text_hidden_size=128), "text_hidden_size=128 (the weights say 64)"),
    ],
)
def test_a_model_config_that_does_not_fit_its_weights_is_one_line(tiny_model, tmp_path, edit, says):
    info = dict(TINY)
    edit(info)
    path = tmp_path / "edited.pt"
    torch.save({"model_config": dict(TINY_CONFIG, model_info=info), "state_dict": tiny_model.state_dict()}, path)
    with pytest.raises(UserError) as error:
        ckpt.load_model(path, device="cpu")
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message and says in message


def test_a_model_config_without_model_info_is_one_line(tiny_model, tmp_path):
    path = tmp_path / "no-info.pt"
    torch.save({"model_config": {"vision_model": "ViT-B-16"}, "state_dict": tiny_model.state_dict()}, path)
    with pytest.raises(UserError, match="has no model_info") as error:
        ckpt.load_model(path, device="cpu")
    assert "\n" not in str(error.value)


def test_unknown_device_is_a_user_error(tiny_model, tmp_path):
    ckpt.save_model(tiny_model, tmp_path / "tiny.pt", TINY_CONFIG)
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        ckpt.load_model(tmp_path / "tiny.pt", device="tpu")
