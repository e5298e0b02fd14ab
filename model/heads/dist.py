"""DiST (Gao et al., arXiv 2602.18043): spatial and temporal knowledge compensators guided by LLM attributes.

Stage 1 decomposes every action name into spatial attributes (objects, body parts, scene) and temporal attributes
(the phases of the motion); their MiniLM embeddings arrive as ``text["spatial"]`` [E, N, S, Dt] and
``text["temporal"]`` [E, N, T', Dt]. This head incorporates them:

- SKC (spatial knowledge compensator): M learnable object queries first read the class's spatial attributes
  (a decoder layer: self-attention, cross-attention to the attributes, MLP), then each query gathers the important
  patch tokens of every frame by cross-attention, giving object-level prototypes [T, M, D] per video.
- TKC (temporal knowledge compensator): the frames' global tokens (plus time positions) become frame-level
  prototypes [T, D] through decoder layers: self-attention between frames (inter-frame relations), cross-attention
  to the class's temporal attributes, MLP.
- Matching: spatial distance = bidirectional mean Hausdorff between the object prototypes of query and class
  (sets of T * M vectors); temporal distance = OTAM between the frame prototypes (divided by T so the two are on
  the same scale); logits = -scale * (w * spatial + (1 - w) * temporal).

The seed document describes the modules but not how a query video, which has no label, meets the class knowledge.
Our choice: the query is compensated once per candidate class, with that class's attributes, and compared with the
class's support prototypes built with the same attributes ("does this video show what class n's attributes
describe?"). Only the small query-side tensors depend on the class: the patch tokens' keys and values are
projected once per video, so the cost grows with N only in the attention weights.

Ablation switches (constructor options, so ``--opt`` works and checkpoints record them):
``knowledge`` = "llm" (attributes of the ``dist`` knowledge kind), "name" (the class-name embedding is the only
attribute of both compensators) or "none" (no text: the object queries are used as learned, and the frames attend
to a learned bank of temporal tokens instead of attributes; nothing depends on the class, so no per-class pass);
``skc`` / ``tkc`` = False drops that compensator and its metric.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from fsar.model.batch import EpisodeBatch
from fsar.model.matching import bimhm_distance, otam_bidirectional, sinusoidal_positions
from fsar.model.registry import Head, HeadOutput, heads_for, knowledge_need, register_method, scale_parameter

KNOWLEDGE = ("llm", "name", "none")
GEN_HINT = "fsar-knowledge generate --dataset DATASET --kind dist"


def decoder(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerDecoder:
    """Pre-norm decoder layers: self-attention, cross-attention to a memory (attributes), MLP."""
    layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers)


class TextTokens(nn.Module):
    """Projects attribute embeddings [.., S, Dt] to the visual width [.., S, D] (linear + layer norm)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class PatchAggregator(nn.Module):
    """Object queries gather patch tokens per frame by multi-head cross-attention (pre-norm, residual).

    queries [B, C, M, D] (C = classes whose knowledge shaped them, or 1), patches [B, V, T, P, D]
    -> object prototypes [B, V, C, T, M, D]. Keys and values are projected once per video, never per class.
    No MLP after the attention (our choice, not the paper's): it would run on every (query, class, frame, object)
    and cost most of the head's time on a CPU; the queries already pass an MLP in the guidance layer.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def forward(self, queries: Tensor, patches: Tensor) -> Tensor:
        h = self.heads
        q = rearrange(self.q(self.norm_q(queries)), "b c m (h d) -> b c m h d", h=h)
        kv = self.norm_kv(patches)
        k = rearrange(self.k(kv), "b v t p (h d) -> b v t p h d", h=h)
        v = rearrange(self.v(kv), "b v t p (h d) -> b v t p h d", h=h)
        attn = torch.einsum("bcmhd,bvtphd->bvcthmp", q, k).mul(q.shape[-1] ** -0.5).softmax(dim=-1)
        out = rearrange(torch.einsum("bvcthmp,bvtphd->bvctmhd", attn, v), "b v c t m h d -> b v c t m (h d)")
        return queries[:, None, :, None] + self.drop(self.o(out))  # [B, V, C, T, M, D]


class SpatialCompensator(nn.Module):
    """SKC: learnable object-level prototypes, steered by spatial attributes, aggregating each frame's patches."""

    def __init__(self, dim: int, objects: int, heads: int, layers: int, dropout: float, guided: bool):
        super().__init__()
        self.objects = nn.Parameter(torch.randn(objects, dim) * 0.02)
        self.guide = decoder(dim, heads, layers, dropout) if guided else None  # "none": learned queries alone
        self.aggregate = PatchAggregator(dim, heads, dropout)

    def queries(self, attrs: Tensor | None, pad: Tensor | None) -> Tensor:
        """attrs [B, S, D] (pad [B, S], True = padding) -> class-steered object queries [B, M, D]; None -> [1, M, D]."""
        if attrs is None:
            return self.objects[None]
        q = repeat(self.objects, "m d -> b m d", b=attrs.shape[0])
        return self.guide(q, attrs, memory_key_padding_mask=pad)

    def forward(self, queries: Tensor, patches: Tensor) -> Tensor:
        """queries [B, C, M, D], patches [B, V, T, P, D] -> object prototypes [B, V, C, T, M, D]."""
        return self.aggregate(queries, patches)


class TemporalCompensator(nn.Module):
    """TKC: frame-level prototypes from the frames' global tokens; inter-frame self-attention, attribute cross-attention."""

    def __init__(self, dim: int, num_frames: int, heads: int, layers: int, dropout: float, guided: bool, bank: int):
        super().__init__()
        self.register_buffer("pos", sinusoidal_positions(num_frames, dim), persistent=False)
        self.time = nn.Parameter(torch.zeros(num_frames, dim))  # learned correction of the fixed positions
        self.bank = None if guided else nn.Parameter(torch.randn(bank, dim) * 0.02)  # "none": learned temporal tokens
        self.relate = decoder(dim, heads, layers, dropout)

    def forward(self, frames: Tensor, memory: Tensor | None, pad: Tensor | None) -> Tensor:
        """frames [B, T, D], memory [B, S, D] attributes (None: the learned bank) -> frame prototypes [B, T, D]."""
        t = frames.shape[1]
        x = frames + self.pos[:t] + self.time[:t]
        if memory is None:
            memory, pad = repeat(self.bank, "s d -> b s d", b=frames.shape[0]), None
        return self.relate(x, memory, memory_key_padding_mask=pad)


@register_method("dist")
class DiSTHead(Head):
    """Logits = -scale * (w * spatial Bi-MHM of object prototypes + (1 - w) * OTAM / T of frame prototypes)."""

    needs_tokens = True
    needs_text = "dist"

    def __init__(
        self,
        dim: int,
        num_frames: int,
        text_dim: int | None = None,
        knowledge: str = "llm",
        skc: bool = True,
        tkc: bool = True,
        objects: int = 8,
        heads: int = 8,
        layers: int = 1,
        bank: int = 4,
        spatial_weight: float = 0.5,
        lam: float = 0.1,
        dropout: float = 0.1,
        scale: float = 10.0,
    ):
        super().__init__(dim, num_frames, text_dim)
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"DiST option knowledge must be one of {', '.join(KNOWLEDGE)}, got '{knowledge}'")
        if not (skc or tkc):
            raise ValueError("DiST needs at least one compensator: skc=False and tkc=False together leave nothing to match")
        if knowledge != "none" and text_dim is None:
            raise ValueError(f"DiST with knowledge='{knowledge}' needs text embeddings (text_dim is None); use knowledge=none for no text")
        if not 0.0 <= spatial_weight <= 1.0:
            raise ValueError(f"DiST option spatial_weight must lie in [0, 1], got {spatial_weight}")
        self.knowledge, self.use_skc, self.use_tkc = knowledge, bool(skc), bool(tkc)
        self.lam = lam
        # with one compensator off, the other one's metric carries the whole logit
        self.spatial_weight = spatial_weight if (skc and tkc) else (1.0 if skc else 0.0)
        h = heads_for(dim, heads)
        guided = knowledge != "none"
        self.skc = SpatialCompensator(dim, objects, h, layers, dropout, guided) if skc else None
        self.tkc = TemporalCompensator(dim, num_frames, h, layers, dropout, guided, bank) if tkc else None
        self.spatial_text = TextTokens(text_dim, dim) if (guided and skc) else None
        self.temporal_text = TextTokens(text_dim, dim) if (guided and tkc) else None
        self.log_scale = scale_parameter(scale)

    @classmethod
    def text_need(cls, options: dict) -> str | None:
        """llm -> the ``dist`` knowledge kind, name -> class names only, none -> no text."""
        return knowledge_need(options, "dist")

    def attributes(self, text: dict[str, Tensor] | None, item: str) -> tuple[Tensor | None, Tensor | None]:
        """The raw attribute embeddings [E, N, S, Dt] and padding mask [E, N, S] (True = padding) of one item."""
        if self.knowledge == "none":
            return None, None
        if self.knowledge == "name":
            if text is None or "names" not in text:
                raise ValueError("DiST with knowledge='name' needs text['names']; the trainer passes it when text_need is 'names'")
            return text["names"][:, :, None], None
        if text is None or item not in text:
            raise ValueError(
                f"DiST with knowledge='llm' needs the 'dist' knowledge embeddings (text['{item}']); make them with: "
                f"{GEN_HINT} (or pass knowledge=name|none)"
            )
        mask = text.get(f"{item}_mask")
        return text[item], (~mask.bool() if mask is not None else None)

    # ------------------------------------------------------------------ spatial path

    def spatial_distance(self, support: Tensor, query: Tensor, text) -> Tensor:
        """Object prototypes of support (own class) and query (every class) -> Bi-MHM distance [E, Q, N]."""
        e, n, k = support.shape[:3]
        attrs, pad = self.attributes(text, "spatial")
        if attrs is None:
            obj = self.skc.queries(None, None)  # [1, M, D]
            s_q, q_q = repeat(obj, "one m d -> (e n) one m d", e=e, n=n), repeat(obj, "one m d -> e one m d", e=e)
        else:
            tokens = self.spatial_text(attrs)  # [E, N, S, D]
            obj = self.skc.queries(rearrange(tokens, "e n s d -> (e n) s d"),
                                   None if pad is None else rearrange(pad, "e n s -> (e n) s"))  # [(E N), M, D]
            s_q, q_q = obj[:, None], rearrange(obj, "(e n) m d -> e n m d", e=e)
        s_obj = self.skc(s_q, rearrange(support[..., 1:, :], "e n k t p d -> (e n) k t p d"))  # [(E N), K, 1, T, M, D]
        s_obj = reduce(s_obj, "(e n) k one t m d -> e n (one t m) d", "mean", e=e)  # class prototype: mean over K
        q_obj = self.skc(q_q, query[..., 1:, :])  # [E, Q, N or 1, T, M, D]
        q_obj = rearrange(q_obj, "e q c t m d -> e q c (t m) d")
        q_obj, s_obj = F.normalize(q_obj, dim=-1), F.normalize(s_obj, dim=-1)
        if q_obj.shape[2] == 1:  # knowledge "none": one query-side pass serves every class
            dist = 1.0 - torch.einsum("eqid,enjd->eqnij", q_obj[:, :, 0], s_obj)
        else:
            dist = 1.0 - torch.einsum("eqnid,enjd->eqnij", q_obj, s_obj)
        return 0.5 * bimhm_distance(dist)  # [E, Q, N], mean of the two directions

    # ------------------------------------------------------------------ temporal path

    def temporal_distance(self, support: Tensor, query: Tensor, text) -> Tensor:
        """Frame prototypes of support (own class) and query (every class) -> OTAM / T distance [E, Q, N]."""
        e, n, k, t = support.shape[:4]
        qn = query.shape[1]
        attrs, pad = self.attributes(text, "temporal")
        s_frames, q_frames = support[..., 0, :], query[..., 0, :]  # global tokens [E, N, K, T, D], [E, Q, T, D]
        if attrs is None:
            s_proto = rearrange(self.tkc(rearrange(s_frames, "e n k t d -> (e n k) t d"), None, None),
                                "(e n k) t d -> e n k t d", e=e, n=n)
            q_proto = rearrange(self.tkc(rearrange(q_frames, "e q t d -> (e q) t d"), None, None),
                                "(e q) t d -> e q t d", e=e)[:, :, None].expand(-1, -1, n, -1, -1)
        else:
            mem = self.temporal_text(attrs)  # [E, N, S, D]
            s_mem = repeat(mem, "e n s d -> (e n k) s d", k=k)
            s_pad = None if pad is None else repeat(pad, "e n s -> (e n k) s", k=k)
            s_proto = rearrange(self.tkc(rearrange(s_frames, "e n k t d -> (e n k) t d"), s_mem, s_pad),
                                "(e n k) t d -> e n k t d", e=e, n=n)
            q_mem = repeat(mem, "e n s d -> (e q n) s d", q=qn)  # every query meets every class's attributes
            q_pad = None if pad is None else repeat(pad, "e n s -> (e q n) s", q=qn)
            q_in = repeat(q_frames, "e q t d -> (e q n) t d", n=n)
            q_proto = rearrange(self.tkc(q_in, q_mem, q_pad), "(e q n) t d -> e q n t d", e=e, q=qn)
        s_proto = reduce(s_proto, "e n k t d -> e n t d", "mean")
        dist = 1.0 - torch.einsum("eqnid,enjd->eqnij", F.normalize(q_proto, dim=-1), F.normalize(s_proto, dim=-1))
        return otam_bidirectional(dist, self.lam) / t

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        support, query, text = batch.support, batch.query, batch.text
        if support.dim() != 6 or query.dim() != 5:
            raise ValueError(f"DiST needs tokens [E, N, K, T, 1+P, D] and [E, Q, T, 1+P, D], got {tuple(support.shape)} and {tuple(query.shape)}")
        if support.shape[-2] < 2:
            raise ValueError("DiST's SKC needs patch tokens (1 + P with P >= 1), got only the global token")
        dist = 0.0
        if self.use_skc:
            dist = dist + self.spatial_weight * self.spatial_distance(support, query, text)
        if self.use_tkc:
            dist = dist + (1.0 - self.spatial_weight) * self.temporal_distance(support, query, text)
        return HeadOutput(-dist * self.log_scale.exp())
