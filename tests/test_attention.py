"""The fast attention path (patches/0011, cn_clip_pokemon/attention.py) on the CPU.

- upstream's CLIP built with use_flash_attention=True gives the same features as the default build
  with the same weights, converted by upstream's own convert_state_dict (both towers, padded texts);
- a flash-attn 2 install (a stand-in laid out like 2.x: no flash_attn.flash_attention) breaks
  unpatched upstream's import and leaves ours working;
- checkpoints keep upstream's key layout either way (load_model reads a fast-attention model's keys).
"""
import json
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import cn_clip_pokemon  # noqa: F401  (installs the patches before cn_clip is imported)
from cn_clip_pokemon.attention import FlashMHA
from cn_clip_pokemon.model_config_resolver import model_info_for

REPO = Path(__file__).resolve().parents[1]


def tiny_clip(use_flash_attention):
    from cn_clip.clip.model import CLIP

    torch.manual_seed(0)
    info = dict(model_info_for("ViT-T-8-64", "RBT-Tiny-chinese"))
    info["use_flash_attention"] = use_flash_attention
    return CLIP(**info).eval()


def texts_with_padding():
    from cn_clip.clip import tokenize

    # different lengths, so BERT's padding mask matters
    return tokenize(["皮卡丘", "一张喷火龙的图片，它在飞", "妙蛙种子"], context_length=24)


def test_fast_attention_equals_default_on_both_towers():
    from cn_clip.clip.model import convert_state_dict

    default = tiny_clip(False)
    fast = tiny_clip(True)
    prefixed = OrderedDict(("module." + k, v.clone()) for k, v in default.state_dict().items())
    converted = convert_state_dict(prefixed)
    fast.load_state_dict(OrderedDict((k[len("module."):], v) for k, v in converted.items()))
    assert any(".attn.Wqkv." in k for k in fast.state_dict()), "the fast build uses FlashMHA's layout"

    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    texts = texts_with_padding()
    with torch.no_grad():
        image_default, text_default = default.encode_image(images), default.encode_text(texts)
        image_fast, text_fast = fast.encode_image(images), fast.encode_text(texts)
    assert torch.allclose(image_fast, image_default, atol=1e-5, rtol=1e-4)
    assert torch.allclose(text_fast, text_default, atol=1e-5, rtol=1e-4)
    # the mask is really applied: without it the padded texts would differ
    assert not torch.allclose(text_default[0], text_default[1])


def test_fast_attention_trains_like_default():
    """Gradients agree too (training takes this path): one backward pass on each build."""
    from cn_clip.clip.model import convert_state_dict

    default = tiny_clip(False).train()
    fast = tiny_clip(True).train()
    prefixed = OrderedDict(("module." + k, v.clone()) for k, v in default.state_dict().items())
    fast.load_state_dict(OrderedDict((k[len("module."):], v) for k, v in convert_state_dict(prefixed).items()))
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    texts = texts_with_padding()[:2]
    for model in (default, fast):
        image_features, text_features, scale = model(images, texts)
        (scale * image_features @ text_features.T).logsumexp(0).sum().backward()
    grad_default = default.visual.conv1.weight.grad
    grad_fast = fast.visual.conv1.weight.grad
    assert torch.allclose(grad_fast, grad_default, atol=1e-5, rtol=1e-3)


def test_flash_mha_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="batch first"):
        FlashMHA(8, 2, batch_first=False)
    with pytest.raises(ValueError, match="multiple"):
        FlashMHA(10, 3)


FLASH_ATTN_2_STANDIN = {
    # flash-attn 2.x: flash_attn_qkvpacked_func at the top, no flash_attn.flash_attention module
    "flash_attn/__init__.py": '__version__ = "2.6.3"\nfrom flash_attn.flash_attn_interface import flash_attn_qkvpacked_func\n',
    "flash_attn/flash_attn_interface.py": "def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, causal=False, **kwargs):\n    raise RuntimeError('CUDA only')\n",
}


@pytest.fixture()
def flash_attn_2_path(tmp_path):
    for name, text in FLASH_ATTN_2_STANDIN.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _python(code, extra_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra_path), str(REPO)]), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)


def test_flash_attn_2_install_breaks_upstream_but_not_us(flash_attn_2_path, tmp_path):
    unpatched = _python("import cn_clip.clip", flash_attn_2_path)
    assert unpatched.returncode != 0
    assert "flash_attn.flash_attention" in unpatched.stderr  # the crash users hit (upstream #370)

    checkpoint = tmp_path / "tiny.pt"
    ours = _python(
        f"""
        import torch
        import cn_clip_pokemon
        from cn_clip_pokemon.attention import _FLASH_ATTN_2
        from cn_clip_pokemon.checkpoint import model_config_for, save_model, load_model
        from cn_clip.clip.model import CLIP
        assert _FLASH_ATTN_2 is not None and _FLASH_ATTN_2.__module__ == "flash_attn.flash_attn_interface"
        config = model_config_for("ViT-T-8-64", "RBT-Tiny-chinese")
        for fast in (False, True):
            model = CLIP(**dict(config["model_info"], use_flash_attention=fast))
            image = model.encode_image(torch.zeros(1, 3, 64, 64))
        save_model(CLIP(**config["model_info"]), {str(checkpoint)!r}, config)
        model, preprocess = load_model({str(checkpoint)!r}, device="cpu")
        print("ok", tuple(image.shape))
        """,
        flash_attn_2_path,
    )
    assert ours.returncode == 0, ours.stderr
    assert "ok (1, 256)" in ours.stdout


def test_fast_attention_checkpoint_keeps_upstream_layout(tmp_path):
    """A model trained with the fast path is saved (as upstream's training does) in the default layout."""
    from cn_clip.clip.model import convert_state_dict

    from cn_clip_pokemon.checkpoint import load_model, model_config_for

    fast = tiny_clip(True)
    state = convert_state_dict(OrderedDict(("module." + k, v) for k, v in fast.state_dict().items()))
    assert not any("Wqkv" in k or "out_proj" in k and "attention.self" in k for k in state)
    path = tmp_path / "fast.pt"
    torch.save({"epoch": 1, "step": 1, "state_dict": state, "model_config": model_config_for("ViT-T-8-64", "RBT-Tiny-chinese")}, path)
    model, _ = load_model(path, device="cpu")
    default_keys = set(tiny_clip(False).state_dict())
    assert set(model.state_dict()) == default_keys
    with torch.no_grad():
        texts = texts_with_padding()
        assert torch.allclose(model.encode_text(texts), fast.encode_text(texts), atol=1e-5, rtol=1e-4)
