"""The method registry and the one contract every few-shot head follows.

A method is a ``Head`` (a torch.nn.Module) registered by name::

    @register_method("otam")
    class OTAMHead(Head):
        def __init__(self, dim: int, num_frames: int, text_dim: int | None = None, **options): ...
        def forward(self, batch: EpisodeBatch) -> HeadOutput: ...
        def loss(self, out: HeadOutput, batch: EpisodeBatch) -> Tensor: ...  # optional: cross-entropy by default

Input: one ``fsar.model.batch.EpisodeBatch`` of E episodes, all with the same way N, shot K, queries Q, frames T,
built by ``fsar.model.source`` for training and evaluation alike (its docstring lists every field's shape):

- ``batch.support``: [E, N, K, T, D] pooled frame features, or [E, N, K, T, 1 + P, D] tokens when the head sets
  ``needs_tokens = True``. Support is sorted by class: ``support[e, n]`` are the K videos of the episode's n-th class.
- ``batch.query``: [E, Q, T, D] or [E, Q, T, 1 + P, D]. Queries are in any order; their labels index the N classes.
- Tokens: index 0 of the token axis is the frame's global feature (CLIP class token after the final layer norm,
  the pooled feature map of ResNet-50 and tiny), so ``x[..., 0, :]`` is always the pooled feature; indices 1..P are
  CLIP's patch tokens or the flattened positions of the last feature map.
- ``batch.text``: None unless the head needs text; then a dict of tensors already gathered in episode class order,
  ``text[key][e, n]`` belonging to class n of episode e:
    ``names`` [E, N, Dt] always (L2-normalised class-name prompt embeddings);
    for a knowledge kind, each item of the stage-1 contract (``fsar.knowledge.contract.TextEmbeddings.items``),
    e.g. dist: ``spatial`` [E, N, S, Dt] and ``temporal`` [E, N, T', Dt], with ``<item>_mask`` [E, N, S] (bool,
    True = real entry) where the contract gives a mask.
- ``batch.query_labels``: [E, Q] in 0..N-1 at training, None at evaluation (a head never scores with them).
- ``batch.support_masks`` / ``query_masks`` (+ ``*_has_mask``): at training only, when the head sets
  ``needs_masks = True``: each clip's foreground masks on the same frames and crops as its pixels.

Output: ``HeadOutput(logits [E, Q, N], aux_losses)``. At evaluation the logits are the decision (argmax = the
predicted class); at training (``self.training``) they are the logits the head's loss trains, which may differ
where the method says so (LGA trains on video-video matching and decides with video-video fused with video-text).

Loss: the trainer minimises ``head.loss(out, batch)``: by default cross-entropy of ``out.logits`` against
``batch.query_labels`` plus the sum of ``out.aux_losses`` (scalar losses, weights already applied by the head); a
head whose method trains with something else overrides ``loss``. The model's own classification loss over the
training classes (``FewShotModel``, key ``"class"`` of the model's output) is added outside the head's loss.

Needs, declared as class attributes so the run can prepare them before a head exists:

- ``needs_tokens: bool``: features keep the token axis;
- ``needs_masks: bool``: training batches carry the clips' masks;
- ``needs_text: None | "names" | <knowledge kind>``: the text of a head built with default options. What the run
  asks is ``text_need(options)`` (the one question; it returns ``needs_text`` unless the head overrides it because
  an option such as ``knowledge`` changes the text); it then loads that text and passes its width as ``text_dim``.

Options: every keyword argument of a head's ``__init__`` beyond (dim, num_frames, text_dim) is a method option,
set from the command line with ``--opt key=value`` and recorded in the checkpoint. A head checks its options in
``__init__`` (or, for what decides the text, in ``text_need``) and raises ValueError naming the option.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsar.core.registry import Registry
from fsar.model.batch import EpisodeBatch


@dataclass
class HeadOutput:
    logits: Tensor  # [E, Q, N]: the decision at evaluation, what the loss trains at training
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalar losses, already weighted


class Head(nn.Module):
    """Base class of few-shot heads: scores queries against the support set of each episode."""

    needs_tokens: bool = False  # True: features keep the token axis [.., T, 1 + P, D]
    needs_masks: bool = False  # True: training batches carry support_masks / query_masks
    needs_text: str | None = None  # text with default options: None, "names", or a knowledge kind ("dist", "lga", "star")

    def __init__(self, dim: int, num_frames: int, text_dim: int | None = None):
        super().__init__()
        self.dim, self.num_frames, self.text_dim = dim, num_frames, text_dim

    @classmethod
    def text_need(cls, options: dict) -> str | None:
        """The text this head needs when built with ``options``: ``needs_text`` unless an option changes it (then
        override, e.g. DiST's ``knowledge``); the run loads that text and passes its width as ``text_dim``."""
        return cls.needs_text

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        """Logits [E, Q, N] of every query of every episode against its episode's N classes."""
        raise NotImplementedError

    def loss(self, out: HeadOutput, batch: EpisodeBatch) -> Tensor:
        """The head's training loss: cross-entropy of the logits against the query labels plus the aux losses."""
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), batch.query_labels.flatten())
        for aux in out.aux_losses.values():
            loss = loss + aux.float()
        return loss


METHODS: Registry[type[Head]] = Registry("method", package="fsar.model.heads")


def register_method(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a Head available to ``fsar-train --method NAME`` (a name registered twice is refused)."""

    def wrap(cls: type[Head]) -> type[Head]:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"method '{name}' must be a subclass of fsar.model.registry.Head")
        METHODS.register(name, cls)
        cls.method_name = name
        return cls

    return wrap


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return METHODS.names()


def get_method(name: str) -> type[Head]:
    """The Head class registered as ``name``; an unknown name is a one-line UnknownName listing the choices."""
    return METHODS.get(name)


def build_method(name: str, dim: int, num_frames: int, text_dim: int | None = None, **options) -> Head:
    """Instantiate a registered head; unknown options give a one-line error naming the accepted ones."""
    import inspect

    cls = get_method(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "dim", "num_frames", "text_dim")]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in options if k not in accepted]
    if unknown and not takes_any:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for method '{name}'; it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls(dim=dim, num_frames=num_frames, text_dim=text_dim, **options)


def knowledge_need(options: dict, kind: str) -> str | None:
    """The text a knowledge-reading head needs for its ``knowledge`` option: llm -> the kind, name -> class names,
    none -> no text; any other value is a one-line error (before anything is generated)."""
    from fsar.core.errors import FsarError

    needs = {"llm": kind, "name": "names", "none": None}
    choice = options.get("knowledge", "llm")
    if choice not in needs:
        raise FsarError(f"--knowledge must be one of llm, name, none, got '{choice}'")
    return needs[choice]


def scale_parameter(init: float) -> nn.Parameter:
    """A learnable positive logit scale, stored as its log so it stays positive."""
    return nn.Parameter(torch.tensor(float(init)).log())


def heads_for(dim: int, wanted: int) -> int:
    """The largest attention-head count <= wanted that divides dim (128, 256, 768, 2048 all take 4 or 8)."""
    return next(h for h in range(max(1, wanted), 0, -1) if dim % h == 0)
