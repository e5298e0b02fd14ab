"""The method registry and the one contract every few-shot head follows.

A method is a ``Head`` (a torch.nn.Module) registered by name::

    @register_method("otam")
    class OTAMHead(Head):
        def __init__(self, dim: int, num_frames: int, text_dim: int | None = None, **options): ...
        def forward(self, support, query, text=None, query_labels=None) -> HeadOutput: ...

Inputs (E episodes scored at once, all with the same way N, shot K, queries Q, frames T):

- ``support``: [E, N, K, T, D] pooled frame features, or [E, N, K, T, 1 + P, D] tokens when the head sets
  ``needs_tokens = True``. Support is sorted by class: ``support[e, n]`` are the K videos of the episode's n-th class.
- ``query``: [E, Q, T, D] or [E, Q, T, 1 + P, D]. Queries are in any order; their labels index the N classes.
- Tokens: index 0 of the token axis is the frame's global feature (CLIP class token after the final layer norm,
  the pooled feature map of ResNet-50 and tiny), so ``x[..., 0, :]`` is always the pooled feature; indices 1..P are
  CLIP's patch tokens or the flattened positions of the last feature map.
- ``text``: None unless ``needs_text`` is set; then a dict of tensors already gathered in episode class order,
  ``text[key][e, n]`` belonging to class n of episode e:
    ``names`` [E, N, Dt] always (L2-normalised class-name prompt embeddings);
    for a knowledge kind, each item of the stage-1 contract (``fsar.knowledge.contract.TextEmbeddings.items``),
    e.g. dist: ``spatial`` [E, N, S, Dt] and ``temporal`` [E, N, T', Dt], with ``<item>_mask`` [E, N, S] (bool,
    True = real entry) where the contract gives a mask.
- ``query_labels``: [E, Q] in 0..N-1 during training (for auxiliary losses that need them), None at evaluation.

Output: ``HeadOutput(logits [E, Q, N], aux_losses)``; the trainer minimises cross-entropy of the logits plus the
sum of ``aux_losses`` (weights already applied by the head). Heads declare what they need with two class
attributes: ``needs_tokens: bool`` and ``needs_text: None | "names" | <knowledge kind>`` (e.g. "dist"); a head whose
options change the text it needs overrides the classmethod ``text_need(options)``.
Options: every keyword argument of a head's ``__init__`` beyond (dim, num_frames, text_dim) is a method option,
set from the command line with ``--opt key=value`` and recorded in the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn


@dataclass
class HeadOutput:
    logits: Tensor  # [E, Q, N]
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalar losses, already weighted


class Head(nn.Module):
    """Base class of few-shot heads: scores queries against the support set of each episode."""

    needs_tokens: bool = False  # True: features keep the token axis [.., T, 1 + P, D]
    needs_text: str | None = None  # None, "names", or a stage-1 knowledge kind ("dist", "lga", "star")

    def __init__(self, dim: int, num_frames: int, text_dim: int | None = None):
        super().__init__()
        self.dim, self.num_frames, self.text_dim = dim, num_frames, text_dim

    @classmethod
    def text_need(cls, options: dict) -> str | None:
        """The text this head needs when built with ``options`` (override when an option such as DiST's
        ``knowledge`` changes it); the trainer loads that text and passes its width as ``text_dim``."""
        return cls.needs_text

    def forward(
        self,
        support: Tensor,
        query: Tensor,
        text: dict[str, Tensor] | None = None,
        query_labels: Tensor | None = None,
    ) -> HeadOutput:
        raise NotImplementedError


_METHODS: dict[str, type[Head]] = {}


def register_method(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a Head available to ``fsar-train --method NAME``."""

    def wrap(cls: type[Head]) -> type[Head]:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"method '{name}' must be a subclass of fsar.model.registry.Head")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return wrap


def _load_builtin() -> None:
    """Import the head modules shipped with fsar (each registers itself)."""
    import importlib
    import pkgutil

    import fsar.model.heads as heads

    for mod in pkgutil.iter_modules(heads.__path__):
        try:
            importlib.import_module(f"fsar.model.heads.{mod.name}")
        except Exception as e:  # one broken head module must not take every other method down with it
            import warnings

            warnings.warn(f"head module fsar.model.heads.{mod.name} failed to import ({type(e).__name__}: {e})", stacklevel=2)


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> type[Head]:
    """The Head class registered as ``name``; a one-line error lists the choices."""
    if name not in _METHODS:
        _load_builtin()
    if name not in _METHODS:
        raise KeyError(f"unknown method '{name}'; choose one of: {', '.join(list_methods())}")
    return _METHODS[name]


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
