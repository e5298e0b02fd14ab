"""STAR (Liu, Zhao and Wang, arXiv 2605.13202): temporal semantic attention and a semantic-guided, bidirectional,
multi-frequency state-space prototype refiner, on temporally ordered LLM descriptors.

Stage 1 writes, per class, ordered sentences of how the action unfolds and a one-sentence summary; their MiniLM
embeddings arrive as ``text["descriptors"]`` [E, N, L, Dt] (with ``descriptors_mask``) and ``text["summary"]``
[E, N, Dt]. Each video's frame features [T, D] pass through:

- TSA, temporal semantic attention: every frame attends to the class's ordered descriptors (multi-head cross
  attention, residual). Our choice, to make the attention *temporal*: an order prior in the attention logits,
  -strength * (t / (T-1) - l / (L-1))^2 for frame t and descriptor l, with a learned strength per head, so that
  early frames lean to the first descriptors and late frames to the last (the descriptors are ordered in time).
- STPR, semantic temporal prototype refiner: Mamba-style blocks (``fsar.model.ssm``'s selective scan) over the
  frame sequence, on several temporal frequencies (the sequence average-pooled at strides 1, 2, 4: our choice of
  "multi-frequency temporal sampling", pooling being sampling with an anti-aliasing filter), each in both
  directions (a forward scan and a time-reversed scan with their own convolution and SSM parameters, the input and
  output projections shared, as Vision Mamba does). The seed names three submodules without defining them; our
  reading of each (each one switchable):
    * SGF, semantic-guided fusion: the class summary, projected, sets a per-channel scale and shift of the scan's
      input and a bias of its step sizes Δ (the text decides what enters the state and how long it is kept);
    * ASD, adaptive scale-direction fusion: the branches (stride x direction) are mixed per frame with softmax
      weights scored from each branch's own output, instead of a plain mean;
    * ACU, adaptive context update: the refinement r is written back into the sequence through a gate,
      z + sigmoid(g(r, summary)) * r, instead of z + r.
- Matching: on the refined sequences, the mean of three frame-level distances (cosine frame distances d [T, T]):
  OTAM (soft monotonic alignment, both directions, / T), Bi-MHM (order-free nearest frames) and our reading of the
  paper's "frame-level temporal matching objective": the distance of temporally corresponding frames, mean_t d[t, t].
  logits = -scale * (w_otam * OTAM + w_bimhm * Bi-MHM + w_frame * frame) / (w_otam + w_bimhm + w_frame).

Query side (the seed is silent: a query has no label): we follow DiST's choice. A query is refined once per
candidate class, with that class's descriptors (TSA) and summary (SGF, ACU), and compared with that class's
prototype built with the same text ("does this video unfold as class n's descriptors say?"). The support videos
are refined with their own class's text and averaged over the K shots into the prototype. When nothing depends on
the class (``knowledge="none"``, or the text-reading modules switched off) the query is refined once.

Sizes (our choice, for CPUs): the scans run at width ``inner`` = 64 with ``state`` = 8 and a convolution of 3
frames, whatever the feature width, since the per-class query pass multiplies their cost by N; 10,000 5-way
1-shot test episodes at T = 8 and width 256 took 47 s of one core. The scan is ``fsar.model.ssm``'s torch path, or
mamba_ssm's kernel on CUDA when that package imports (``scan`` option). The reversal mirror (tests) holds when T
is a multiple of every stride.

Ablation switches (constructor options, so ``--opt`` works and checkpoints record them): ``knowledge`` = "llm"
(the ``star`` knowledge kind), "name" (the class-name embedding is the only descriptor and the summary) or "none"
(a learned bank of descriptor tokens and a learned summary vector, the same for every class); ``tsa``, ``stpr``,
``bidirectional``, ``multi_frequency``, ``sgf``, ``asd``, ``acu`` = False drop that part. With both ``tsa`` and
``stpr`` off the head is the fused OTAM / Bi-MHM / frame matching of the raw features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn

from fsar.model.batch import EpisodeBatch
from fsar.model.matching import bimhm_distance, otam_bidirectional, sinusoidal_positions
from fsar.model.registry import Head, HeadOutput, heads_for, knowledge_need, register_method, scale_parameter
from fsar.model.ssm import IMPLEMENTATIONS, selective_scan

KNOWLEDGE = ("llm", "name", "none")
GEN_HINT = "fsar-knowledge generate --dataset DATASET --kind star"


class TextTokens(nn.Module):
    """Projects text embeddings [.., Dt] to the visual width [.., D] (linear + layer norm)."""

    def __init__(self, text_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def order_positions(present: Tensor) -> Tensor:
    """present [.., L] (True = a real descriptor) -> relative order in [0, 1] of each real descriptor among the real
    ones of its row (0.5 when a row has one); padding slots get 0 (they are masked anyway)."""
    rank = present.long().cumsum(-1) - 1
    count = present.long().sum(-1, keepdim=True)
    rel = rank.float() / (count - 1).clamp(min=1).float()
    return torch.where(count > 1, rel, torch.full_like(rel, 0.5)) * present


class TemporalSemanticAttention(nn.Module):
    """TSA: frames [B, V, T, D] attend to descriptor tokens [B, C, L, D] -> [B, V, C, T, D] (residual, pre-norm).

    Queries are projected once per video and keys and values once per class; the output projection is folded into
    the values per head, so the per-(video, class) work is only the attention weights and their weighted sum.
    """

    def __init__(self, dim: int, num_frames: int, heads: int, dropout: float, order_scale: float = 4.0):
        super().__init__()
        self.heads, self.order_scale = heads, order_scale
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("pos", sinusoidal_positions(num_frames, dim), persistent=False)
        self.time = nn.Parameter(torch.zeros(num_frames, dim))  # learned correction of the fixed positions
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.order = nn.Parameter(torch.zeros(heads))  # strength of the order prior: order_scale * softplus(order)
        self.drop = nn.Dropout(dropout)

    def forward(self, frames: Tensor, tokens: Tensor, present: Tensor | None) -> Tensor:
        h, (b, v, t, d) = self.heads, frames.shape
        c, length = tokens.shape[1:3]
        q = rearrange(self.q(self.norm(frames) + self.pos[:t] + self.time[:t]), "b v t (h e) -> b v h t e", h=h)
        k = rearrange(self.k(tokens), "b c l (h e) -> b c h l e", h=h)
        val = rearrange(self.v(tokens), "b c l (h e) -> b c h l e", h=h)
        out_w = rearrange(self.o.weight, "d (h e) -> h d e", h=h)
        val = torch.einsum("bchle,hde->bchld", val, out_w)  # values through W_o, per head
        logits = torch.einsum("bvhte,bchle->bvchtl", q, k) * q.shape[-1] ** -0.5
        if present is None:
            present = torch.ones(tokens.shape[:3], dtype=torch.bool, device=tokens.device)
        present = present.expand(b, c, length)
        tau = torch.arange(t, device=frames.device, dtype=torch.float32) / max(t - 1, 1) if t > 1 else frames.new_full((1,), 0.5)
        gap = (tau[:, None] - order_positions(present)[:, :, None, None, :]) ** 2  # [B, C, 1, T, L]
        prior = -self.order_scale * F.softplus(self.order)[:, None, None] * gap  # [B, C, H, T, L]
        logits = logits + prior[:, None]
        logits = logits.masked_fill(~present[:, None, :, None, None, :], float("-inf"))
        attn = logits.softmax(dim=-1)
        out = torch.einsum("bvchtl,bchld->bvctd", attn, val) + self.o.bias
        return frames[:, :, None] + self.drop(out)


class ScanBranch(nn.Module):
    """One direction at one temporal stride: depthwise convolution along the scan direction, SiLU, selective SSM.

    x [B, Di, L] -> [B, Di, L]. ``reverse``: the convolution looks ahead and the scan runs from the last step back,
    so a reverse branch on a sequence equals a forward branch with the same weights on the flipped sequence, flipped.
    """

    def __init__(self, inner: int, state: int, conv: int, reverse: bool, scan: str, asd: bool):
        super().__init__()
        self.reverse, self.kernel, self.state, self.scan = reverse, conv, state, scan
        self.dt_rank = math.ceil(inner / 16)
        self.conv = nn.Conv1d(inner, inner, conv, groups=inner)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        # Mamba's initialisation: step sizes log-uniform in [1e-3, 1e-1] (the bias is softplus's inverse of them),
        # A = -(1, 2, .., S) per channel (S4D-real), stored as log(-A); skip connection D = 1
        dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.score = nn.Parameter(torch.randn(inner) * inner ** -0.5) if asd else None  # ASD: relevance direction

    def forward(self, x: Tensor, film: tuple[Tensor, Tensor, Tensor] | None) -> Tensor:
        if self.reverse:  # the kernel mirrored, over the frames ahead: the forward convolution of the flipped sequence
            u = F.conv1d(F.pad(x, (0, self.kernel - 1)), self.conv.weight.flip(-1), self.conv.bias, groups=x.shape[1])
        else:
            u = self.conv(F.pad(x, (self.kernel - 1, 0)))
        u = F.silu(u)
        dt_bias = None
        if film is not None:  # SGF: per-channel scale and shift of the scan input, bias of the step sizes
            gamma, beta, dt_bias = film
            u = u * (1.0 + gamma[..., None]) + beta[..., None]
        dt, b, c = self.x_proj(u.transpose(1, 2)).split([self.dt_rank, self.state, self.state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2)
        if dt_bias is not None:
            delta = delta + dt_bias[..., None]
        return selective_scan(u, delta, -torch.exp(self.A_log), b.transpose(1, 2), c.transpose(1, 2), self.D,
                              delta_softplus=True, reverse=self.reverse, impl=self.scan)


class AdaptiveUpdate(nn.Module):
    """ACU: gate [B, T, D] in (0, 1) from the refinement (low-rank MLP) and the class semantics (linear)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, rank), nn.GELU(), nn.Linear(rank, dim))
        self.sem = nn.Linear(dim, dim, bias=False)

    def forward(self, r: Tensor, sem: Tensor) -> Tensor:
        return torch.sigmoid(self.net(self.norm(r)) + self.sem(sem)[:, None])


class SemanticTemporalRefiner(nn.Module):
    """STPR: z [B, T, D] and class semantics sem [B, D] -> refined sequence [B, T, D] (module docstring)."""

    def __init__(self, dim: int, inner: int, state: int, conv: int, strides: tuple[int, ...], bidirectional: bool,
                 sgf: bool, asd: bool, acu: bool, dropout: float, scan: str):
        super().__init__()
        self.inner, self.strides, self.use_asd = inner, tuple(strides), asd
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner)  # scan input and output gate
        directions = (False, True) if bidirectional else (False,)
        self.branches = nn.ModuleList(
            nn.ModuleList(ScanBranch(inner, state, conv, rev, scan, asd) for rev in directions) for _ in self.strides
        )
        self.out_proj = nn.Linear(inner, dim)
        self.sgf = nn.Linear(dim, 3 * inner) if sgf else None
        if self.sgf is not None:  # starts close to the unguided scan
            nn.init.normal_(self.sgf.weight, std=0.1 / math.sqrt(dim))
            nn.init.zeros_(self.sgf.bias)
        self.acu = AdaptiveUpdate(dim, max(8, dim // 8)) if acu else None
        self.drop = nn.Dropout(dropout)

    def forward(self, z: Tensor, sem: Tensor | None) -> Tensor:
        t = z.shape[1]
        x, gate = self.in_proj(self.norm(z)).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # [B, Di, T]
        film = self.sgf(sem).chunk(3, dim=-1) if (self.sgf is not None and sem is not None) else None
        outs, scores = [], []
        for stride, pair in zip(self.strides, self.branches):
            xs = F.avg_pool1d(x, stride, stride, ceil_mode=True) if stride > 1 else x
            for branch in pair:
                y = branch(xs, film)
                if stride > 1:  # back to one value per frame: each pooled step covers `stride` frames
                    y = y.repeat_interleave(stride, dim=-1)[..., :t]
                outs.append(y)
                if self.use_asd:
                    scores.append(torch.einsum("bdt,d->bt", y, branch.score))
        if len(outs) == 1:
            y = outs[0]
        elif self.use_asd:  # ASD: per-frame softmax over branches
            w = torch.stack(scores).softmax(dim=0)  # [R, B, T]
            y = (torch.stack(outs) * w[:, :, None]).sum(dim=0)
        else:
            y = torch.stack(outs).mean(dim=0)
        r = self.out_proj(self.drop(y.transpose(1, 2) * F.silu(gate)))
        if self.acu is not None:
            return z + self.acu(r, sem) * r
        return z + r


@register_method("star")
class STARHead(Head):
    """Logits = -scale * weighted mean of OTAM / T, Bi-MHM and frame-wise distances of TSA + STPR refined sequences."""

    needs_text = "star"

    def __init__(
        self,
        dim: int,
        num_frames: int,
        text_dim: int | None = None,
        knowledge: str = "llm",
        tsa: bool = True,
        stpr: bool = True,
        bidirectional: bool = True,
        multi_frequency: bool = True,
        sgf: bool = True,
        asd: bool = True,
        acu: bool = True,
        strides: tuple[int, ...] | list[int] = (1, 2, 4),
        inner: int = 64,
        state: int = 8,
        conv: int = 3,
        heads: int = 4,
        bank: int = 4,
        otam_weight: float = 0.5,
        bimhm_weight: float = 0.25,
        frame_weight: float = 0.25,
        lam: float = 0.1,
        dropout: float = 0.1,
        scale: float = 10.0,
        scan: str = "auto",
    ):
        super().__init__(dim, num_frames, text_dim)
        if knowledge not in KNOWLEDGE:
            raise ValueError(f"STAR option knowledge must be one of {', '.join(KNOWLEDGE)}, got '{knowledge}'")
        switches = dict(tsa=tsa, stpr=stpr, bidirectional=bidirectional, multi_frequency=multi_frequency, sgf=sgf, asd=asd, acu=acu)
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"STAR option {key} must be true or false, got {value!r} (e.g. --opt {key}=false)")
        text = knowledge != "none" and self.reads_text(switches)
        if text and text_dim is None:
            raise ValueError(f"STAR with knowledge='{knowledge}' needs text embeddings (text_dim is None); use knowledge=none for no text")
        strides = tuple(int(s) for s in strides)
        if not strides or any(s < 1 for s in strides) or len(set(strides)) != len(strides):
            raise ValueError(f"STAR option strides must be distinct positive integers, e.g. [1, 2, 4], got {list(strides)}")
        weights = (otam_weight, bimhm_weight, frame_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"STAR matching weights must be >= 0 with a positive sum, got otam {otam_weight}, "
                             f"bimhm {bimhm_weight}, frame {frame_weight}")
        if scan not in IMPLEMENTATIONS:
            raise ValueError(f"STAR option scan must be one of {', '.join(IMPLEMENTATIONS)}, got '{scan}'")
        if min(inner, state, conv, heads, bank) < 1:
            raise ValueError("STAR options inner, state, conv, heads and bank must be >= 1")
        self.knowledge, self.use_tsa, self.use_stpr = knowledge, tsa, stpr
        self.lam = lam
        self.weights = tuple(w / sum(weights) for w in weights)
        self.uses_semantics = stpr and (sgf or acu)
        # the query is refined once per class when any part reads class text (DiST's choice; module docstring)
        self.per_class = text
        self.tsa = TemporalSemanticAttention(dim, num_frames, heads_for(dim, heads), dropout) if tsa else None
        self.stpr = SemanticTemporalRefiner(dim, inner, state, conv, strides if multi_frequency else (1,), bidirectional,
                                            sgf, asd, acu, dropout, scan) if stpr else None
        self.descriptor_text = TextTokens(text_dim, dim) if (text and tsa) else None
        self.summary_text = TextTokens(text_dim, dim) if (text and self.uses_semantics) else None
        # knowledge "none": learned descriptor tokens and a learned summary, shared by every class
        self.bank = nn.Parameter(torch.randn(bank, dim) * 0.02) if (not text and tsa) else None
        self.summary = nn.Parameter(torch.randn(dim) * 0.02) if (not text and self.uses_semantics) else None
        self.log_scale = scale_parameter(scale)

    @staticmethod
    def reads_text(options: dict) -> bool:
        """Whether a head with these options reads class text: TSA reads descriptors, SGF and ACU the summary."""
        get = lambda key: options.get(key, True)  # noqa: E731 (every switch defaults to on)
        return bool(get("tsa") or (get("stpr") and (get("sgf") or get("acu"))))

    @classmethod
    def text_need(cls, options: dict) -> str | None:
        """llm -> the ``star`` knowledge kind, name -> class names only, none (or no part that reads text) -> no text."""
        if not cls.reads_text(options):
            return None
        return knowledge_need(options, "star")

    # ------------------------------------------------------------------ text

    def _text(self, text: dict[str, Tensor] | None, key: str) -> Tensor:
        if text is None or key not in text:
            if self.knowledge == "name":
                raise ValueError("STAR with knowledge='name' needs text['names']; the trainer passes it when text_need is 'names'")
            raise ValueError(f"STAR with knowledge='llm' needs the 'star' knowledge embeddings (text['{key}']); make them with: "
                             f"{GEN_HINT} (or pass knowledge=name|none)")
        return text[key]

    def semantics(self, text: dict[str, Tensor] | None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Descriptor tokens [E, N, L, D] (or [1, 1, L, D] learned), their presence mask [E, N, L] (None = all real)
        and the summary vector [E, N, D] (or [1, 1, D] learned); None for what no module reads."""
        tokens = present = sem = None
        if self.knowledge == "none":
            tokens = None if self.bank is None else self.bank[None, None]
            sem = None if self.summary is None else self.summary[None, None]
            return tokens, present, sem
        key = "names" if self.knowledge == "name" else "descriptors"
        if self.descriptor_text is not None:
            raw = self._text(text, key)
            if self.knowledge == "name":
                raw = raw[:, :, None]
            else:
                mask = text.get("descriptors_mask")
                present = None if mask is None else mask.bool()
            tokens = self.descriptor_text(raw.float())
        if self.summary_text is not None:
            sem = self.summary_text(self._text(text, "names" if self.knowledge == "name" else "summary").float())
        return tokens, present, sem

    # ------------------------------------------------------------------ refinement

    def refine(self, frames: Tensor, tokens: Tensor | None, present: Tensor | None, sem: Tensor | None) -> Tensor:
        """frames [B, V, T, D] with the text of C classes (tokens [B, C, L, D], present [B, C, L], sem [B, C, D];
        C = 1 for a video's own class or shared learned text) -> refined sequences [B, V, C, T, D]."""
        b, v, t, d = frames.shape
        c = 1
        for x in (tokens, sem):
            if x is not None:
                c = max(c, x.shape[1])
        if self.tsa is not None:
            tokens = tokens.expand(b, *tokens.shape[1:])
            present = None if present is None else present.expand(b, *present.shape[1:])
            z = self.tsa(frames, tokens, present)  # [B, V, C', T, D]
        else:
            z = frames[:, :, None]
        if z.shape[2] != c:
            z = z.expand(-1, -1, c, -1, -1)
        if self.stpr is not None:
            s = None if sem is None else repeat(sem.expand(b, c, d), "b c d -> (b v c) d", v=v)
            z = rearrange(self.stpr(rearrange(z, "b v c t d -> (b v c) t d"), s), "(b v c) t d -> b v c t d", b=b, v=v)
        return z

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        support, query, text = batch.support, batch.query, batch.text
        if support.dim() != 5 or query.dim() != 4:
            raise ValueError(f"STAR needs frame features [E, N, K, T, D] and [E, Q, T, D], got {tuple(support.shape)} and {tuple(query.shape)}")
        e, n, k, t, d = support.shape
        if t > self.num_frames:
            raise ValueError(f"STAR was built for {self.num_frames} frames, got clips of {t}; build it with num_frames >= {t}")
        tokens, present, sem = self.semantics(text)
        # support: each video with its own class's text, then the mean over the K shots
        own = lambda x: None if x is None else rearrange(x.expand(e, n, *x.shape[2:]), "e n ... -> (e n) 1 ...")  # noqa: E731
        s = self.refine(rearrange(support, "e n k t d -> (e n) k t d"), own(tokens), own(present), own(sem))
        proto = reduce(s, "(e n) k 1 t d -> e n t d", "mean", e=e)
        # query: with every class's text (one pass per class), or once when nothing depends on the class
        if self.per_class:
            q = self.refine(query, tokens, present, sem)  # [E, Q, N, T, D]
            dist = 1.0 - torch.einsum("eqntd,ensd->eqnts", F.normalize(q, dim=-1), F.normalize(proto, dim=-1))
        else:
            q = self.refine(query, tokens, present, sem)[:, :, 0]  # [E, Q, T, D]
            dist = 1.0 - torch.einsum("eqtd,ensd->eqnts", F.normalize(q, dim=-1), F.normalize(proto, dim=-1))
        w_otam, w_bimhm, w_frame = self.weights
        total = 0.0
        if w_otam:
            total = total + w_otam * otam_bidirectional(dist, self.lam) / t
        if w_bimhm:
            total = total + w_bimhm * 0.5 * bimhm_distance(dist)
        if w_frame:
            total = total + w_frame * dist.diagonal(dim1=-2, dim2=-1).mean(dim=-1)
        return HeadOutput(-total * self.log_scale.exp())
