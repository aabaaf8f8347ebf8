"""Fast attention for both towers: PyTorch's scaled_dot_product_attention, flash-attn 2 where installed.

Upstream's ``--use-flash-attention`` swaps every attention layer (the ViT's and BERT's) for
flash-attn 1.x's ``FlashMHA``, imported from ``flash_attn.flash_attention``, a module that flash-attn
2 no longer has: with flash-attn 2 installed, upstream fails to import at all (upstream issues #178,
#370). patches/0011 makes upstream import this ``FlashMHA`` instead. It has flash-attn 1.x's
interface and parameter names (``Wqkv``, ``out_proj``), so upstream's ``convert_state_dict`` and
every checkpoint keep upstream's key layout, and it runs on current software with no extra package:

- ``torch.nn.functional.scaled_dot_product_attention`` by default: on CUDA, PyTorch picks its flash
  or memory-efficient kernels; on the CPU, a fused kernel;
- flash-attn 2's ``flash_attn_qkvpacked_func`` when flash-attn 2 is installed, the tensors are on
  CUDA in fp16/bf16 and there is no padding mask (the vision tower): the same maths, one less copy.

Outputs equal upstream's default attention (``nn.MultiheadAttention`` and BERT's hand-written
softmax) up to floating-point rounding; tests/test_attention.py checks that on the CPU.
"""
import importlib
import importlib.util

import torch
import torch.nn.functional as F
from torch import nn


def flash_attn_2_function():
    """flash-attn 2's ``flash_attn_qkvpacked_func``, or None when flash-attn 2 is not installed.

    Any failure to import (a flash-attn 1.x install, a build for another CUDA or torch) means None:
    an installed flash-attn never breaks a model build.
    """
    try:
        if importlib.util.find_spec("flash_attn") is None:
            return None
        module = importlib.import_module("flash_attn")
        return getattr(module, "flash_attn_qkvpacked_func", None)
    except Exception:  # a broken binary raises ImportError, OSError, RuntimeError...
        return None


_FLASH_ATTN_2 = flash_attn_2_function()


class FlashMHA(nn.Module):
    """Multi-head self-attention with flash-attn 1.x's ``FlashMHA`` interface, batch first.

    ``forward(x, key_padding_mask=None, need_weights=False) -> (output, None)``; ``x`` is
    (batch, sequence, embed_dim) and ``key_padding_mask`` (batch, sequence) is True where a token
    is real, as in flash-attn.
    """

    def __init__(self, embed_dim, num_heads, bias=True, batch_first=True, attention_dropout=0.0,
                 causal=False, device=None, dtype=None):
        super().__init__()
        if not batch_first:
            raise ValueError("FlashMHA works batch first, as flash-attn's")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.causal = causal
        self.attention_dropout = attention_dropout
        self.Wqkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    def forward(self, x, key_padding_mask=None, need_weights=False):
        if need_weights:
            raise ValueError("FlashMHA never materialises attention weights (need_weights=False)")
        batch, length, _ = x.shape
        qkv = self.Wqkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        dropout = self.attention_dropout if self.training else 0.0
        if (
            _FLASH_ATTN_2 is not None
            and key_padding_mask is None
            and qkv.is_cuda
            and qkv.dtype in (torch.float16, torch.bfloat16)
        ):
            context = _FLASH_ATTN_2(qkv, dropout, causal=self.causal)  # (batch, length, heads, head_dim)
        else:
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, length, head_dim)
            mask = None
            if key_padding_mask is not None:
                mask = key_padding_mask.to(torch.bool)[:, None, None, :]  # broadcast over heads and queries
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=self.causal and mask is None
            ).transpose(1, 2)
        return self.out_proj(context.reshape(batch, length, self.embed_dim)), None
