"""I2ST (Qian, Zhang, Huang, Wang and Ying, "Joint Image-Instance Spatial-Temporal Attention for Few-shot Action
Recognition", seed 004): instance perception learned from masks, joint image-instance spatial-temporal attention
and global-local prototype matching.

What the paper defines (section 3), on image features f_img [T, C, H, W] (here: the patch tokens 1..P of each
frame, laid out as a square H x W grid):

- IPM, instance perception module: an encoder of 2D convolutions turns f_img into instance embeddings f_ins of the
  same shape; a decoder of 2D convolutions and upsampling reconstructs the action-related instance mask from f_ins,
  trained with an L2 loss against masks from a text-guided segmenter (here ``mask_loss_form=l2``; the default
  differs, see below); the decoder is discarded at inference.
- SAM, spatial-temporal attention module: the spatial sub-module unfolds both streams per frame ([T, HW, C]) and
  computes f_S = FFN(MHA(f_img) + MHA(f_ins)); the temporal sub-module does the same per position over the
  frames ([HW, T, C]); f_ST = AvgPool(f_S) + AvgPool(f_T) (pooled over the positions, [T, C]); a global fusion
  sub-module prepends a learnable token, adds (T + 1) position embeddings and applies multi-head attention: the
  token's output is the global prototype, the T frame outputs the local prototypes. The cross-attention form of
  the sub-modules (instance as query, image as key and value) is the paper's ablation (``attention="cross"``).
- Matching: D = M(local prototypes) + Sim(global tokens), with M = Bi-MHM and Sim = cosine; K shots are averaged
  into the class prototype; loss = cross-entropy + lambda * L_mask, plus "an auxiliary contrastive loss".

Our choices, where the paper is silent (each marked "our choice" in the code):

- Sizes: the encoder is two 3 x 3 convolutions at width C after a group norm (one group: a layer norm over C, H,
  W); the decoder is a 3 x 3 convolution to ``decoder_width`` channels, ``upsample`` times (x2 bilinear, 3 x 3
  convolution), then a 1 x 1 convolution to one mask logit: 4 x 4 positions give 16 x 16 masks by default. Masks
  of the batch are resized to the decoder's output (area when shrinking, bilinear when growing).
- Mask loss (``mask_loss_form``), times ``mask_loss``, over the videos with a mask (support and query clips alike);
  the decoder runs at training only and only on those videos. ``l2``, the paper's: the mean squared error of
  sigmoid(mask logits) against the target over every pixel of every frame. ``bce_dice``, our choice and the
  default (issue #15): binary cross-entropy on the logits (mean over pixels) plus a soft Dice loss per frame
  (+1 smoothed). Why: on sparse masks (4-7 % foreground) L2 through a sigmoid collapses under Adam. The
  background majority pushes every logit down, the steps carry them past the per-pixel mean into saturation, and
  there the gradient 2 (p - m) p (1 - p) vanishes for the foreground too. Measured on the tiny synthetic root
  (2 x 2 grid, 8 x 8 masks, the trainer's AdamW at lr 1e-3, encoder and decoder on the mask loss alone, 40
  episodes): l2 ends with logits of -10 and below, probability 0.000 on truth and on background cells and IoU
  0.000 (so with weight decay 0, at lr 1e-4 and in the full training loss; plain SGD stays near 0.10 on every cell);
  bce_dice gives 0.21 on truth cells against 0.04 on background. On the default benchmark (cached effnet-lite0
  features, the default recipe cut to 200 episodes, bench/bench_i2st_masks.py on 300 test videos): l2 0.000 on
  truth and background cells, IoU 0.000 (the 800-episode l2 run too, logits near -30); bce_dice 0.456 on truth
  cells against 0.053, IoU at 0.5 0.298 +- 0.017, and at the val-chosen threshold 0.075 +- 0.011 above the mean
  training mask (paired, per frame).
- SAM details: pre-norm attention with residuals (the paper writes FFN(MHA + MHA) and a residual only around the
  FFN; without residuals the raw features would be reachable only through attention): self form
  h = img + ins + MHA(img) + MHA(ins), cross form h = ins + MHA(q=ins, kv=img), then h + FFN(h). Fixed sinusoidal
  2D grid positions in the spatial sub-module and time positions in the temporal one (so any square P and any T
  work); learned positions only in the global fusion (T + 1 of them, as the paper). One layer per sub-module,
  ``fusion_layers`` in the global fusion.
- The frame's global token (index 0, the frame adapter's motion-aware frame feature, which the paper's ResNet
  feature map does not have) is added to f_ST before the global fusion (``frame_token=False`` drops it).
- Matching: the paper adds a distance and a similarity; we fuse two distances on the same scale,
  d = (1 - w) * Bi-MHM / 2 + w * (1 - cos(global tokens)), w = ``global_weight`` (0.5: the paper's "average"),
  logits = -scale * d with a learnable scale. Bi-MHM / 2 is the mean of the two directions' mean nearest-frame
  cosine distances, in [0, 2] like 1 - cos.
- Contrastive loss, our reading after MoLo (Wang et al. 2023d, which the paper cites for it): InfoNCE of each
  query's global token against the N class prototypes taken as the mean of the class's local prototypes
  (cosine / ``temperature``), so the global token learns to predict the frames' content; times ``contrastive``;
  training only, when query labels are given.
- Weights and sizes the paper does not give: ``mask_loss`` = 1 (its lambda), ``contrastive`` = 0.1,
  ``temperature`` = 0.1, ``heads`` = 4, ``decoder_width`` = 32, ``upsample`` = 2, ``dropout`` = 0.1. Masks given
  without has-mask flags count as present; a side (support or query) without masks contributes no mask loss.

Cost (dim 128, T 8, 4 x 4 grid, defaults): 0.88 M parameters, 55 k of them in the decoder; a 5-way 1-shot
training episode with 5 queries and masks took 0.25 s forward and backward, evaluation 42 ms per episode (batches of
10), on one core of a busy 2-core machine. ``predict_masks(tokens)`` runs the decoder on request (mask IoU).
The default recipe on the default synthetic benchmark (cached effnet-lite0 tokens, adapter width 128, 5-way 1-shot,
3 queries per class) on that machine: a training step 0.40 s with one torch thread but 6.1 s with two (the second
thread waits on the busy core), the first masks of a video 25-100 ms, evaluation 23 ms per episode with one thread
(batches of 64; each distinct video of a batch runs once at evaluation, 71 ms without that).

Ablation switches (constructor options, so ``--opt`` works and checkpoints record them): ``ipm=false`` (no
instance stream and no mask loss), ``spatial=false``, ``temporal=false`` (with both off f_ST is the pooled image
plus instance features), ``attention=self|cross``, ``matching=global_local|local|global``, ``frame_token=false``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from fsar.core.errors import FsarError
from fsar.model.batch import EpisodeBatch
from fsar.model.matching import bimhm_distance, episode_frame_distance, sinusoidal_positions
from fsar.model.registry import Head, HeadOutput, heads_for, register_method, scale_parameter

ATTENTION = ("self", "cross")
MASK_LOSS_FORMS = ("bce_dice", "l2")
MATCHING = ("global_local", "local", "global")


def grid_positions(side: int, dim: int) -> Tensor:
    """Fixed 2D sinusoidal encodings [side * side, dim] of a square grid: half the channels say the row, half the column."""
    rows = sinusoidal_positions(side, dim // 2)
    cols = sinusoidal_positions(side, dim - dim // 2)
    return torch.cat([repeat(rows, "h c -> (h w) c", w=side), repeat(cols, "w c -> (h w) c", h=side)], dim=-1)


def unique_rows(key: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct values of ``key`` [V]: (values [U], index of each one's first row [U], row -> value index [V])."""
    values, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((len(values),), len(key), dtype=torch.long, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(key), device=key.device), reduce="amin")
    return values, first, inverse


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """masks [B, h, w] in 0..1 -> [B, *size]: area averaging when shrinking, bilinear when growing."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    shrink = masks.shape[-2] >= size[0] and masks.shape[-1] >= size[1]
    out = F.interpolate(masks[:, None], size=size, mode="area" if shrink else "bilinear", **({} if shrink else {"align_corners": False}))
    return out[:, 0]


class InstanceEncoder(nn.Module):
    """IPE: image features [B, C, H, W] -> instance embeddings [B, C, H, W] (group norm, 3x3 conv, GELU, 3x3 conv)."""

    def __init__(self, dim: int):
        super().__init__()
        # our choice: two convolutions at the feature width, after a layer norm over (C, H, W)
        self.net = nn.Sequential(nn.GroupNorm(1, dim), nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class InstanceDecoder(nn.Module):
    """IPD: instance embeddings [B, C, H, W] -> mask logits [B, H * 2^u, W * 2^u] (convolutions, x2 upsampling u times)."""

    def __init__(self, dim: int, width: int, upsample: int):
        super().__init__()
        # our choice: a narrow decoder (width 32) and bilinear x2 steps, each followed by a 3x3 convolution
        layers: list[nn.Module] = [nn.Conv2d(dim, width, 3, padding=1), nn.GELU()]
        for _ in range(upsample):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[:, 0]


class JointAttention(nn.Module):
    """One SAM sub-module over a sequence axis L: image [B, L, D] and instance [B, L, D] (or None) -> fused [B, L, D].

    self: h = img + ins + MHA(img) + MHA(ins); cross: h = ins + MHA(q=ins, kv=img); no instance: h = img + MHA(img);
    then h + FFN(h). Pre-norm; ``pos`` [L, D] is added to the attention inputs.
    """

    def __init__(self, dim: int, heads: int, dropout: float, form: str, instance: bool):
        super().__init__()
        self.form = form
        self.norm_img = nn.LayerNorm(dim)
        self.attn_img = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)  # the cross attention in "cross"
        self.norm_ins = nn.LayerNorm(dim) if instance else None
        self.attn_ins = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if (instance and form == "self") else None
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim), nn.Dropout(dropout))

    def forward(self, img: Tensor, ins: Tensor | None, pos: Tensor) -> Tensor:
        # our choice: pre-norm attention with residuals around it (the paper writes FFN(MHA(img) + MHA(ins)) and a
        # residual around the FFN only), fixed positions added to the attention inputs
        a = self.norm_img(img + pos)
        if ins is None:
            h = img + self.attn_img(a, a, a, need_weights=False)[0]
        elif self.form == "self":
            b = self.norm_ins(ins + pos)
            h = img + ins + self.attn_img(a, a, a, need_weights=False)[0] + self.attn_ins(b, b, b, need_weights=False)[0]
        else:  # cross: the instance asks, the image answers (the paper's ablation)
            b = self.norm_ins(ins + pos)
            h = ins + self.attn_img(b, a, a, need_weights=False)[0]
        return h + self.ffn(self.norm_ffn(h))


class GlobalFusion(nn.Module):
    """[token, f_ST frames] + learned positions -> pre-norm transformer -> global [B, D] and local [B, T, D] prototypes."""

    def __init__(self, dim: int, num_frames: int, heads: int, layers: int, dropout: float):
        super().__init__()
        self.token = nn.Parameter(torch.randn(dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(num_frames + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, t = x.shape[:2]
        if t + 1 > self.pos.shape[0]:
            raise FsarError(f"I2ST was built for {self.pos.shape[0] - 1} frames but got clips of {t}; build it with num_frames >= {t}")
        seq = torch.cat([repeat(self.token, "d -> b 1 d", b=b), x], dim=1) + self.pos[: t + 1]
        out = self.encoder(seq)
        return out[:, 0], out[:, 1:]


@register_method("i2st")
class I2STHead(Head):
    """Logits = -scale * ((1 - w) * Bi-MHM / 2 of local prototypes + w * (1 - cos) of global tokens), after IPM and SAM."""

    needs_tokens = True
    needs_masks = True
    needs_text = None

    def __init__(
        self,
        dim: int,
        num_frames: int,
        text_dim: int | None = None,
        ipm: bool = True,
        spatial: bool = True,
        temporal: bool = True,
        attention: str = "self",
        matching: str = "global_local",
        frame_token: bool = True,
        global_weight: float = 0.5,
        mask_loss: float = 1.0,
        mask_loss_form: str = "bce_dice",
        contrastive: float = 0.1,
        temperature: float = 0.1,
        heads: int = 4,
        fusion_layers: int = 1,
        decoder_width: int = 32,
        upsample: int = 2,
        dropout: float = 0.1,
        scale: float = 10.0,
    ):
        super().__init__(dim, num_frames, text_dim)
        switches = dict(ipm=ipm, spatial=spatial, temporal=temporal, frame_token=frame_token)
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise FsarError(f"I2ST option {key} must be true or false, got {value!r} (e.g. --opt {key}=false)")
        if attention not in ATTENTION:
            raise FsarError(f"I2ST option attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        if attention == "cross" and not ipm:
            raise FsarError("I2ST attention=cross needs the instance stream as its query; drop ipm=false or use attention=self")
        if matching not in MATCHING:
            raise FsarError(f"I2ST option matching must be one of {', '.join(MATCHING)}, got {matching!r}")
        if mask_loss_form not in MASK_LOSS_FORMS:
            raise FsarError(f"I2ST option mask_loss_form must be one of {', '.join(MASK_LOSS_FORMS)}, got {mask_loss_form!r}")
        if not 0.0 <= global_weight <= 1.0:
            raise FsarError(f"I2ST option global_weight must lie in [0, 1], got {global_weight}")
        if min(mask_loss, contrastive) < 0 or not temperature > 0:
            raise FsarError(f"I2ST options mask_loss and contrastive must be >= 0 and temperature > 0, got "
                            f"{mask_loss}, {contrastive}, {temperature}")
        if min(heads, fusion_layers, decoder_width) < 1 or upsample < 0:
            raise FsarError("I2ST options heads, fusion_layers and decoder_width must be >= 1 and upsample >= 0")
        self.use_ipm, self.use_spatial, self.use_temporal, self.use_frame_token = ipm, spatial, temporal, frame_token
        self.attention, self.matching = attention, matching
        # local only / global only put the whole logit on one term
        self.global_weight = {"global_local": global_weight, "local": 0.0, "global": 1.0}[matching]
        self.mask_weight, self.mask_form = mask_loss, mask_loss_form
        self.contrastive, self.temperature = contrastive, temperature
        self.decoder_steps = upsample
        h = heads_for(dim, heads)
        self.encoder = InstanceEncoder(dim) if ipm else None
        self.decoder = InstanceDecoder(dim, decoder_width, upsample) if ipm else None
        self.spatial = JointAttention(dim, h, dropout, attention, ipm) if spatial else None
        self.temporal = JointAttention(dim, h, dropout, attention, ipm) if temporal else None
        self.fusion = GlobalFusion(dim, num_frames, h, fusion_layers, dropout)
        self.log_scale = scale_parameter(scale)

    # ------------------------------------------------------------------ IPM and SAM

    def instances(self, img: Tensor) -> Tensor:
        """IPE on image features [V, T, P, D] (P = side²) -> instance embeddings [V, T, P, D]."""
        v, side = img.shape[0], math.isqrt(img.shape[2])
        # contiguous: torch 2.13's CPU group-norm backward crashes on this permuted (channels-last) view when the
        # input itself needs no gradient (frozen features)
        fmap = rearrange(img, "v t (h w) d -> (v t) d h w", h=side).contiguous()
        return rearrange(self.encoder(fmap), "(v t) d h w -> v t (h w) d", v=v)

    def decode(self, ins: Tensor) -> Tensor:
        """IPD on instance embeddings [V, T, P, D] -> mask logits [V, T, S, S] (training only)."""
        v, side = ins.shape[0], math.isqrt(ins.shape[2])
        logits = self.decoder(rearrange(ins, "v t (h w) d -> (v t) d h w", h=side).contiguous())
        return rearrange(logits, "(v t) s r -> v t s r", v=v)

    def prototypes(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Tokens [V, T, 1 + P, D] -> global [V, D], local [V, T, D] prototypes and instance embeddings [V, T, P, D]."""
        frame, img = tokens[:, :, 0], tokens[:, :, 1:]
        v, t, p, d = img.shape
        ins = self.instances(img) if self.use_ipm else None
        parts = []
        if self.spatial is not None:  # per frame, over the H x W positions
            pos = grid_positions(math.isqrt(p), d).to(img)
            f_s = self.spatial(rearrange(img, "v t p d -> (v t) p d"),
                               None if ins is None else rearrange(ins, "v t p d -> (v t) p d"), pos)
            parts.append(reduce(f_s, "(v t) p d -> v t d", "mean", v=v))
        if self.temporal is not None:  # per position, over the T frames
            pos = sinusoidal_positions(t, d).to(img)
            f_t = self.temporal(rearrange(img, "v t p d -> (v p) t d"),
                                None if ins is None else rearrange(ins, "v t p d -> (v p) t d"), pos)
            parts.append(reduce(f_t, "(v p) t d -> v t d", "mean", v=v))
        if not parts:  # neither branch: the pooled streams themselves (the paper's "IPM + Bi-MHM" row)
            parts.append(img.mean(dim=2))
            if ins is not None:
                parts.append(ins.mean(dim=2))
        f_st = sum(parts)
        if self.use_frame_token:  # our choice: the frame feature of token 0 joins f_ST
            f_st = f_st + frame
        glob, local = self.fusion(f_st)
        return glob, local, ins

    def distinct_prototypes(self, videos: Tensor) -> tuple[Tensor, Tensor, None]:
        """Evaluation: ``prototypes`` of videos [V, T, 1 + P, D] computed once per distinct video (episodes of an
        evaluation batch share most of their videos), the same values for every copy; no instance embeddings."""
        # our choice: group rows by a random projection, then check the grouping exactly (a collision falls back)
        flat = videos.flatten(1)
        key = flat.double() @ torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(flat.device)
        _, first, inverse = unique_rows(key)
        if len(first) == len(videos) or not torch.equal(flat[first][inverse], flat):
            glob, local, _ = self.prototypes(videos)
            return glob, local, None
        glob, local, _ = self.prototypes(videos[first])
        return glob[inverse], local[inverse], None

    def predict_masks(self, tokens: Tensor) -> Tensor:
        """The decoder's mask probabilities for clips' tokens [..., T, 1 + P, D] -> [..., T, S, S] (for mask IoU in
        benchmarks; classification never runs the decoder at evaluation)."""
        if self.encoder is None:
            raise FsarError("I2ST built with ipm=false has no mask decoder; build it with ipm=true to predict masks")
        lead = tokens.shape[:-3]
        flat = tokens.reshape(-1, *tokens.shape[-3:])
        probs = torch.sigmoid(self.decode(self.instances(flat[:, :, 1:])))
        return probs.reshape(*lead, *probs.shape[1:])

    # ------------------------------------------------------------------ losses

    def mask_loss(self, ins: Tensor, masks: Tensor, has: Tensor) -> Tensor:
        """Weighted mask loss of the decoded masks: ins [V, T, P, D], masks [V, T, S, S] at the decoder's size, has [V].

        ``l2`` (the paper's): mean squared error of sigmoid(logits), over every pixel of every frame of those videos.
        ``bce_dice`` (our choice, the default): binary cross-entropy on the logits (mean over the pixels) plus a
        soft Dice loss per frame, averaged; its gradient on a logit never vanishes, unlike L2 through a sigmoid."""
        if not bool(has.any()):
            return ins.new_zeros(())
        logits = self.decode(ins[has])  # [V', T, S, S]: the decoder runs on the videos with a mask only
        target = masks[has].to(logits.dtype)
        if self.mask_form == "l2":
            # our choice: the mean over every pixel of every frame of those videos (the paper sums a d_L2 over videos)
            return self.mask_weight * (torch.sigmoid(logits) - target).pow(2).mean()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        prob = rearrange(torch.sigmoid(logits), "v t h w -> (v t) (h w)")
        flat = rearrange(target, "v t h w -> (v t) (h w)")
        # soft Dice per frame, +1 in numerator and denominator: an empty truth with an empty prediction scores 0 loss
        dice = 1.0 - (2.0 * (prob * flat).sum(-1) + 1.0) / (prob.sum(-1) + flat.sum(-1) + 1.0)
        return self.mask_weight * (bce + dice.mean())

    def contrastive_loss(self, q_glob: Tensor, s_local: Tensor, labels: Tensor) -> Tensor:
        """InfoNCE of query global tokens [E, Q, D] against class prototypes (mean local prototype) [E, N, T, D]."""
        # our choice (the paper only cites it): MoLo's global-to-local contrast, the global token against classes
        classes = F.normalize(s_local.mean(dim=2), dim=-1)
        sims = torch.einsum("eqd,end->eqn", F.normalize(q_glob, dim=-1), classes) / self.temperature
        return self.contrastive * F.cross_entropy(rearrange(sims, "e q n -> (e q) n"), labels.flatten().to(sims.device))

    # ------------------------------------------------------------------ forward

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        support, query = batch.support, batch.query
        if support.dim() != 6 or query.dim() != 5:
            raise ValueError(f"I2ST needs tokens [E, N, K, T, 1+P, D] and [E, Q, T, 1+P, D], got {tuple(support.shape)} "
                            f"and {tuple(query.shape)}")
        p = support.shape[-2] - 1
        if p < 1 or math.isqrt(p) ** 2 != p:
            raise FsarError(f"I2ST needs a square grid of patch tokens after the global token, got {p} positions; "
                            "use a backbone or frame adapter that keeps the feature map")
        e, n, k, t = support.shape[:4]
        qn = query.shape[1]
        videos = torch.cat([rearrange(support, "e n k t p d -> (e n k) t p d"), rearrange(query, "e q t p d -> (e q) t p d")])
        if self.training:
            glob, local, ins = self.prototypes(videos)
        else:  # a video's prototypes do not depend on its episode: each distinct video of the batch runs once
            glob, local, ins = self.distinct_prototypes(videos)
        s_glob = reduce(glob[: e * n * k], "(e n k) d -> e n d", "mean", e=e, n=n)  # K shots averaged
        s_local = reduce(local[: e * n * k], "(e n k) t d -> e n t d", "mean", e=e, n=n)
        q_glob = rearrange(glob[e * n * k:], "(e q) d -> e q d", e=e)
        q_local = rearrange(local[e * n * k:], "(e q) t d -> e q t d", e=e)

        # our choice: two distances on one scale, 0.5 Bi-MHM (mean form) and 1 - cos, both in [0, 2], mixed by w
        dist = 0.0
        if self.global_weight < 1.0:
            dist = dist + (1.0 - self.global_weight) * 0.5 * bimhm_distance(episode_frame_distance(q_local, s_local))
        if self.global_weight > 0.0:
            cos = torch.einsum("eqd,end->eqn", F.normalize(q_glob, dim=-1), F.normalize(s_glob, dim=-1))
            dist = dist + self.global_weight * (1.0 - cos)
        logits = -dist * self.log_scale.exp()

        aux: dict[str, Tensor] = {}
        if self.training and self.contrastive > 0 and batch.query_labels is not None:
            aux["contrastive"] = self.contrastive_loss(q_glob, s_local, batch.query_labels)
        has_masks = batch.support_masks is not None or batch.query_masks is not None
        if self.training and ins is not None and self.mask_weight > 0 and has_masks:
            masks, has = self.episode_masks(batch, (e * n * k, e * qn), t, math.isqrt(p), videos)
            aux["mask"] = self.mask_loss(ins, masks, has)
        return HeadOutput(logits, aux)

    def episode_masks(self, batch: EpisodeBatch, counts: tuple[int, int], frames: int, side: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """The masks [V, T, S, S] (resized to the decoder's output S) and has-mask flags [V] of all videos, support
        then query (``counts`` videos each); a side without masks counts as having none, masks without flags as all
        present."""
        size = (side << self.decoder_steps,) * 2
        masks, flags = [], []
        for m, has, count in ((batch.support_masks, batch.support_has_mask, counts[0]), (batch.query_masks, batch.query_has_mask, counts[1])):
            if m is None:
                masks.append(like.new_zeros(count, frames, *size))
                flags.append(torch.zeros(count, dtype=torch.bool, device=like.device))
                continue
            m = resize_masks(m.reshape(count * frames, *m.shape[-2:]).to(like), size)
            masks.append(rearrange(m, "(v t) h w -> v t h w", v=count))
            present = torch.ones(count, dtype=torch.bool) if has is None else has.reshape(count).bool()
            flags.append(present.to(like.device))
        return torch.cat(masks), torch.cat(flags)
