"""Transformer parts every model shares, one concept per file (as facebookresearch/vggt's ``vggt/layers/``).

Parameter names follow DINOv2 / VGGT / Pi3 (``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.k_norm``,
``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``, ``patch_embed.proj``), so a
foreign checkpoint of those families maps onto a model built from these parts by renaming prefixes only.
"""
from models.layers.attention import Attention, CrossAttention, attend, merge_heads, split_heads
from models.layers.block import Block, CrossBlock
from models.layers.drop_path import DropPath
from models.layers.layer_scale import LayerScale
from models.layers.mlp import Mlp, linear_stack
from models.layers.patch_embed import PatchEmbed
from models.layers.rope import RotaryEmbedding1D, RotaryEmbedding2D, grid_positions

__all__ = [
    "Attention",
    "Block",
    "CrossAttention",
    "CrossBlock",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RotaryEmbedding1D",
    "RotaryEmbedding2D",
    "attend",
    "grid_positions",
    "linear_stack",
    "merge_heads",
    "split_heads",
]
