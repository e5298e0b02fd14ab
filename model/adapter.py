"""The trainable frame adapter between a frozen pretrained backbone and a few-shot head.

A frozen ImageNet or DINOv2 backbone gives each frame a global feature and a grid of patch features. Average
pooling throws away *where* things are, and on motion-defined classes (left-to-right against right-to-left, lifting
against putting down) where is all there is: frozen, mean-pooled features score near chance on the synthetic
benchmark, and a prototype head on them has nothing to learn. The adapter is what trains on top of the frozen
features (our choice, shared by every head, so that the methods differ only in their heads):

1. **layout**: the patch grid is pooled to ``grid x grid`` positions, each position's feature is projected to a
   small width, and the flattened map goes through a linear layer, so the frame feature keeps where things are;
2. **global**: the backbone's global token, projected;
3. **time**: a residual depthwise convolution over neighbouring frames (kernel 3), so a frame feature can carry
   what changed since the previous frame (the motion) as well as what it shows, then (``temporal="attn"``, the
   default) one pre-norm self-attention layer over the clip's frames with learned time positions, so each frame
   also sees the whole clip's course. On the synthetic val classes, OTAM after 900 episodes: 45.6 % with the
   convolution alone, 50.4 % with the attention layer (500 val episodes, one seed: an early measurement that
   chose the default, not a benchmark).

Frame feature = time(global + layout), width ``dim``. For heads that need tokens (DiST's SKC) the patch tokens
are projected to the same width and returned after the frame feature (token 0): [.., T, 1 + grid², dim].
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

ADAPTERS = ("spatial", "none")


def pool_grid(tokens: Tensor, grid: int) -> Tensor:
    """tokens [B, 1 + P, D] (P = h * w, a square map) -> [B, 1 + grid², D], the patches average-pooled to a
    grid x grid map (a smaller map is repeated up to it, so small inputs work too)."""
    patches = tokens[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"patch tokens do not form a square map ({patches.shape[1]} positions)")
    if side == grid:
        return tokens
    fmap = rearrange(patches, "b (h w) d -> b d h w", h=side)
    pooled = rearrange(F.adaptive_avg_pool2d(fmap, grid), "b d h w -> b (h w) d")
    return torch.cat([tokens[:, :1], pooled], dim=1)


class FrameAdapter(nn.Module):
    """Backbone tokens [..., T, 1 + P, D_in] -> frame features [..., T, dim] (or tokens [..., T, 1 + P, dim])."""

    def __init__(self, in_dim: int, dim: int = 256, grid: int = 4, position_dim: int = 32, dropout: float = 0.1,
                 tokens: bool = False, temporal: str = "attn", max_frames: int = 64):
        super().__init__()
        self.temporal = temporal
        self.grid, self.tokens = grid, tokens
        self.norm = nn.LayerNorm(in_dim)
        self.global_proj = nn.Linear(in_dim, dim)
        self.position_proj = nn.Linear(in_dim, position_dim)
        self.layout = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(grid * grid * position_dim, dim))
        self.time = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim)
        nn.init.zeros_(self.time.weight)  # starts as the identity (residual)
        nn.init.zeros_(self.time.bias)
        if temporal not in ("conv", "attn"):
            raise ValueError(f"unknown adapter temporal module '{temporal}'; choose conv or attn")
        if temporal == "attn":  # one self-attention layer over the frames, with learned time positions
            self.time_pos = nn.Parameter(torch.zeros(max_frames, dim))
            self.time_attn = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout, batch_first=True, norm_first=True)
        self.patch_proj = nn.Linear(in_dim, dim) if tokens else None

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        t = x.shape[-3]
        x = self.norm(x.reshape(-1, *x.shape[-3:]))  # [B, T, 1 + P, D_in]
        patches = x[:, :, 1:]
        if patches.shape[2] != self.grid * self.grid:
            raise ValueError(f"the adapter expects {self.grid}x{self.grid} patch positions, got {patches.shape[2]}")
        layout = self.layout(rearrange(self.position_proj(patches), "b t p d -> b t (p d)"))
        frames = self.global_proj(x[:, :, 0]) + layout  # [B, T, dim]
        frames = frames + rearrange(self.time(rearrange(frames, "b t d -> b d t")), "b d t -> b t d")
        if self.temporal == "attn":
            frames = self.time_attn(frames + self.time_pos[:t])
        if self.tokens:
            frames = torch.cat([frames[:, :, None], self.patch_proj(patches)], dim=2)  # [B, T, 1 + P, dim]
        return frames.reshape(*lead, t, *frames.shape[2:])
