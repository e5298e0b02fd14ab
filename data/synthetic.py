"""The procedural synthetic action-video benchmark ``synthetic``: real .mp4 files, split lists, masks, registry entry.

Each class is a (motion program, object) pair named in plain language ("pushing a cup from left to right").
15 programs in 6 families x 6 objects = 90 classes, split by class 60/15/15 (train/val/test):

- reversed pairs are exact time reversals of one another (left/right, closer/away, putting on/taking off,
  covering/uncovering, clockwise/anticlockwise, lifting up/putting down), and three "pretending" programs go part
  of the way and come back, so a method that ignores frame order cannot separate them;
- a family's val and test classes use objects it never shows in training (each object is trained with other
  families), so knowledge of the class name's parts can help;
- appearance varies within a class: random colours, sizes, textured backgrounds, static props, 1-3 moving
  distractors (some shaped like the objects), camera jitter, white balance, flicker, pixel noise, and a random
  onset and duration of the action (it fills 35-80% of the clip; a hand is present only while it acts).

Importing this module registers the class list (no video is generated then); ``ensure_synthetic`` writes the
videos on demand. Everything is a deterministic function of the seed.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsar.data.registry import build_dataset, get_dataset, register_dataset

GENERATOR_VERSION = 1  # bump when rendering changes, so old folders are not mistaken for new ones
DEFAULTS = dict(videos_per_class=20, size=64, frames=16, seed=0)
FPS = 8
SUPERSAMPLE = 2  # render at 2x and average down: anti-aliased edges and sub-pixel motion
# mask values: which acting part covers each pixel (0 = background, distractors and clutter)
MASK_OBJECT, MASK_HAND, MASK_PROP = 1, 2, 3

OBJECTS = ("ball", "cup", "star", "ring", "book", "bottle")


@dataclass(frozen=True)
class Program:
    name: str
    family: str
    template: str  # "{o}" is the object
    reverse_of: str | None = None  # rendered as the exact time reversal of this program
    pretend: bool = False  # goes part of the way and comes back


PROGRAMS = {p.name: p for p in [
    Program("push_lr", "lateral", "pushing a {o} from left to right"),
    Program("push_rl", "lateral", "pushing a {o} from right to left", reverse_of="push_lr"),
    Program("pretend_push", "lateral", "pretending to push a {o}", pretend=True),
    Program("closer", "depth", "moving a {o} closer to the camera"),
    Program("away", "depth", "moving a {o} away from the camera", reverse_of="closer"),
    Program("put_on", "box", "putting a {o} on top of a box"),
    Program("take_off", "box", "taking a {o} off a box", reverse_of="put_on"),
    Program("pretend_put_on", "box", "pretending to put a {o} on top of a box", pretend=True),
    Program("cover", "cloth", "covering a {o} with a cloth"),
    Program("uncover", "cloth", "uncovering a {o}", reverse_of="cover"),
    Program("pretend_cover", "cloth", "pretending to cover a {o} with a cloth", pretend=True),
    Program("spin_cw", "spin", "spinning a {o} clockwise"),
    Program("spin_acw", "spin", "spinning a {o} anticlockwise", reverse_of="spin_cw"),
    Program("lift", "vertical", "lifting a {o} up"),
    Program("put_down", "vertical", "putting a {o} down", reverse_of="lift"),
]}
# a ball rolls rather than being pushed
_BALL_NAMES = {"push_lr": "rolling a ball from left to right", "push_rl": "rolling a ball from right to left",
               "pretend_push": "pretending to roll a ball"}
# objects each family keeps for val and test: never paired with that family in training; families that look alike
# (lateral/vertical translation, box/cloth props, in-place depth/spin) share them so the object alone is no clue
HELD_OUT = {
    "lateral": ("book", "cup"), "vertical": ("book", "cup"),
    "box": ("ring", "ball"), "cloth": ("ring", "ball"),
    "depth": ("bottle", "star"), "spin": ("bottle", "star"),
}
FAMILIES = ("lateral", "depth", "box", "cloth", "spin", "vertical")


def class_key(program: str, obj: str) -> str:
    """Plain-language class name of a (program, object) pair."""
    if obj == "ball" and program in _BALL_NAMES:
        return _BALL_NAMES[program]
    return PROGRAMS[program].template.format(o=obj)


def class_table() -> list[dict]:
    """Every class with its program, object and split, in registry order (train, val, test)."""
    rows = []
    for split in ("train", "val", "test"):
        for family in FAMILIES:
            val_obj, test_obj = HELD_OUT[family]
            objs = {"train": [o for o in OBJECTS if o not in (val_obj, test_obj)], "val": [val_obj],
                    "test": [test_obj]}[split]
            for obj in objs:
                for prog in PROGRAMS.values():
                    if prog.family == family:
                        rows.append(dict(key=class_key(prog.name, obj), program=prog.name, object=obj,
                                         family=family, split=split))
    return rows


_TABLE = class_table()
_BY_KEY = {row["key"]: row for row in _TABLE}


def reversed_pairs() -> list[tuple[str, str]]:
    """(forward class, its time-reversed class) for every reversed pair."""
    return [(class_key(p.reverse_of, row["object"]), row["key"])
            for row in _TABLE for p in [PROGRAMS[row["program"]]] if p.reverse_of]


def _register() -> None:
    splits = {s: [r["key"] for r in _TABLE if r["split"] == s] for s in ("train", "val", "test")}
    info = build_dataset("synthetic", splits, direction_matters=True,
                         description="procedural synthetic actions (15 motion programs x 6 objects; 60/15/15)",
                         extra={"programs": {r["key"]: (r["program"], r["object"]) for r in _TABLE}})
    register_dataset(info)


_register()


# ---------------------------------------------------------------- shapes: (u, v) in object radii -> (inside, detail)

def _shape(kind: str, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside mask and a detail mask (drawn in a second colour) that makes each shape's rotation visible."""
    rho = np.hypot(u, v)
    if kind in ("ball", "circle"):
        inside = rho < 1
        return inside, inside & (np.hypot(u - 0.5, v) < 0.32)
    if kind == "ring":
        ang = np.abs(np.arctan2(v, u))
        inside = (rho < 1) & (rho > 0.55) & (ang > 0.45)
        return inside, inside & (ang > 2.6)
    if kind == "star":
        theta = np.mod(np.arctan2(v, u), 2 * np.pi / 5) - np.pi / 5
        edge = 0.45 + 0.55 * (1 - np.abs(theta) / (np.pi / 5))
        inside = rho < edge
        return inside, inside & (rho > 0.55) & (np.abs(np.arctan2(v, u)) < 0.45)
    if kind == "cup":
        half = 0.5 + 0.3 * (0.8 - v) / 1.6
        body = (np.abs(v) < 0.8) & (np.abs(u) < half)
        handle = (np.hypot(u - 0.75, v) < 0.42) & (np.hypot(u - 0.75, v) > 0.22) & (u > 0.7)
        inside = body | handle
        return inside, body & (v < -0.55)
    if kind == "book":
        inside = (np.abs(u) < 0.72) & (np.abs(v) < 1)
        return inside, inside & (u < -0.5)
    if kind == "bottle":
        body = (np.abs(u) < 0.45) & (v > -0.25) & (v < 1)
        neck = (np.abs(u) < 0.18) & (v <= -0.25) & (v > -1)
        inside = body | neck
        return inside, (neck & (v < -0.75)) | (body & (np.abs(v - 0.35) < 0.18))
    if kind == "square":
        inside = (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
        return inside, inside & (u > 0.4) & (v > 0.4)
    if kind == "triangle":
        inside = (v < 0.8) & (np.abs(u) < (v + 1) * 0.5)
        return inside, inside & (v > 0.5)
    if kind == "hand":
        inside = (u / 0.75) ** 2 + v ** 2 < 1
        fingers = (v < -0.2) & (np.mod(u + 0.75, 0.5) < 0.08)
        return inside, inside & fingers
    if kind.startswith("box"):  # props: local units are already half-width/half-height (aspect in kind)
        inside = (np.abs(u) < 1) & (np.abs(v) < 1)
        return inside, inside & (v < -0.7)
    if kind.startswith("cloth"):
        inside = (np.abs(u) < 1) & (np.abs(v) < 1)
        return inside, inside & (np.mod(u * 3 + v * 1.5, 1.0) < 0.35)
    raise ValueError(f"unknown shape '{kind}'")


@dataclass
class Sprite:
    """One shape at one frame: centre (x, y) and radius r in frame widths; rx/ry stretch props to rectangles."""
    kind: str
    x: float
    y: float
    r: float
    angle: float
    color: np.ndarray
    detail: np.ndarray
    mask_id: int = 0
    rx: float = 1.0
    ry: float = 1.0


class Canvas:
    """A supersampled frame being painted back to front, with an id buffer for the acting-object masks."""

    def __init__(self, background: np.ndarray, cam: tuple[int, int], size: int):
        n = size * SUPERSAMPLE
        oy, ox = cam
        self.n, self.ox, self.oy = n, ox, oy
        self.img = background[oy:oy + n, ox:ox + n].copy()
        self.ids = np.zeros((n, n), dtype=np.uint8)

    def paint(self, s: Sprite) -> None:
        n = self.n
        reach = s.r * max(s.rx, s.ry) * 1.5 * n
        cx = s.x * n - (self.ox - _PAD * n)  # sprite centre in canvas pixels
        cy = s.y * n - (self.oy - _PAD * n)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, n)
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, n)
        if x0 >= x1 or y0 >= y1:
            return
        xs = (np.arange(x0, x1) + 0.5 - cx) / (s.r * n)
        ys = (np.arange(y0, y1) + 0.5 - cy) / (s.r * n)
        dx, dy = np.meshgrid(xs, ys)
        c, si = math.cos(s.angle), math.sin(s.angle)
        u = (c * dx + si * dy) / s.rx
        v = (-si * dx + c * dy) / s.ry
        inside, detail = _shape(s.kind, u, v)
        region = self.img[y0:y1, x0:x1]
        shade = (1.0 - 0.18 * np.clip(v, -1, 1))[..., None]  # lit from above
        region[inside] = (s.color * shade)[inside]
        region[detail] = (s.detail * shade)[detail]
        self.ids[y0:y1, x0:x1][inside] = s.mask_id

    def finish(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Average the supersampled pixels down: float RGB [S, S, 3] and the mask [S, S] (majority id)."""
        assert SUPERSAMPLE == 2
        img = (self.img[0::2, 0::2] + self.img[1::2, 0::2] + self.img[0::2, 1::2] + self.img[1::2, 1::2]) * 0.25
        mask = np.zeros((size, size), dtype=np.uint8)
        for mid in (MASK_OBJECT, MASK_HAND, MASK_PROP):
            hit = (self.ids == mid).view(np.uint8)
            count = hit[0::2, 0::2] + hit[1::2, 0::2] + hit[0::2, 1::2] + hit[1::2, 1::2]
            mask[count >= 2] = mid
        return img, mask


_PAD = 0.12  # background margin (in frame widths) that camera jitter can reveal


def _color(rng: np.random.Generator, sat=(0.45, 1.0), val=(0.45, 1.0)) -> np.ndarray:
    """A random colour from HSV ranges, as float RGB 0..1."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background (blobs, stripes or checks) with a table surface, padded for camera jitter."""
    n = int(round(size * SUPERSAMPLE * (1 + 2 * _PAD)))
    ys, xs = np.meshgrid(np.linspace(-_PAD, 1 + _PAD, n), np.linspace(-_PAD, 1 + _PAD, n), indexing="ij")
    a, b = _color(rng, (0.1, 0.7), (0.3, 0.9)), _color(rng, (0.1, 0.7), (0.3, 0.9))
    kind = rng.integers(3)
    if kind == 0:  # smooth blobs: bilinear upsampling of a coarse random grid
        g = rng.uniform(0, 1, (6, 6))
        gy, gx = ys * 4 + 1, xs * 4 + 1
        iy, ix = np.clip(gy.astype(int), 0, 4), np.clip(gx.astype(int), 0, 4)
        fy, fx = gy - iy, gx - ix
        t = (g[iy, ix] * (1 - fy) * (1 - fx) + g[iy + 1, ix] * fy * (1 - fx) + g[iy, ix + 1] * (1 - fy) * fx
             + g[iy + 1, ix + 1] * fy * fx)
    elif kind == 1:  # stripes at a random angle and frequency
        phi, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xs * np.cos(phi) + ys * np.sin(phi)) + rng.uniform(0, 6.3))
    else:  # checks
        k = rng.uniform(4, 10)
        t = ((np.floor(xs * k) + np.floor(ys * k)) % 2) * rng.uniform(0.4, 1.0)
    img = a * t[..., None] + b * (1 - t[..., None])
    if rng.uniform() < 0.7:  # a table surface under the floor line
        table_y = rng.uniform(0.72, 0.82)
        img[ys > table_y] = img[ys > table_y] * 0.35 + _color(rng, (0.1, 0.6), (0.3, 0.8)) * 0.65
    img += rng.normal(0, 0.03, img.shape)  # fine grain
    return np.clip(img, 0, 1).astype(np.float32)


def _smoothstep(p: np.ndarray | float) -> np.ndarray | float:
    p = np.clip(p, 0.0, 1.0)
    return p * p * (3 - 2 * p)


def _appearance_and_timing(rng: np.random.Generator, size: int) -> tuple:
    """The first draws of a video: appearance, then the action's onset a and duration d (fractions of the clip).

    Split out of ``_render`` so ``action_span`` replays exactly these draws without rendering a frame.
    """
    background = _background(rng, size)
    ocol, odet = _color(rng), _color(rng, (0.3, 1.0), (0.1, 0.5))
    r = rng.uniform(0.09, 0.12)
    tilt = rng.uniform(-0.3, 0.3)
    floor_y = rng.uniform(0.58, 0.68)
    skin = np.array([(0.95, 0.8, 0.65), (0.85, 0.65, 0.5), (0.6, 0.43, 0.3), (0.4, 0.28, 0.2)][rng.integers(4)])
    skin = np.clip(skin * rng.uniform(0.9, 1.1), 0, 1)
    # --- action timing: onset a, duration d (fractions of the clip), eased progress
    d = rng.uniform(0.35, 0.8)
    a = rng.uniform(0, 1 - d)
    return background, ocol, odet, r, tilt, floor_y, skin, a, d


def _render(program: str, obj: str, rng: np.random.Generator, size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Render a forward (non-reversed) program: uint8 frames [F, S, S, 3] and masks [F, S, S]."""
    prog = PROGRAMS[program]
    family = prog.family
    background, ocol, odet, r, tilt, floor_y, skin, a, d = _appearance_and_timing(rng, size)
    m = rng.uniform(0.35, 0.6)  # how far a "pretending" action goes before coming back
    # --- family parameters
    P: dict = {}
    if family == "lateral":
        P.update(x0=rng.uniform(0.15, 0.3), x1=rng.uniform(0.7, 0.85))
    elif family == "depth":
        P.update(x=rng.uniform(0.35, 0.65), y0=rng.uniform(0.4, 0.5), s0=rng.uniform(0.5, 0.65),
                 s1=rng.uniform(1.4, 1.7))
    elif family == "box":
        bw, bh = rng.uniform(0.13, 0.17), rng.uniform(0.08, 0.12)
        bx = rng.uniform(0.4, 0.6)
        side = rng.choice([-1, 1])
        P.update(bx=bx, bw=bw, bh=bh, by=floor_y + r - bh, x0=bx + side * (bw + r + rng.uniform(0.04, 0.1)),
                 x1=bx + rng.uniform(-0.04, 0.04), y1=floor_y - 2 * bh, lift=rng.uniform(0.05, 0.12),
                 bcol=_color(rng, (0.2, 0.8), (0.3, 0.8)))
    elif family == "cloth":
        P.update(x=rng.uniform(0.35, 0.65), side=int(rng.integers(3)), ccol=_color(rng), cdet=_color(rng))
    elif family == "spin":
        P.update(x=rng.uniform(0.35, 0.65), y=rng.uniform(0.4, 0.6), sweep=rng.uniform(0.6, 1.3) * np.pi)
    elif family == "vertical":
        P.update(x=rng.uniform(0.3, 0.7), y1=rng.uniform(0.22, 0.32))
    # --- clutter: static props, moving distractors (in front of or behind the action), camera, noise
    props = []
    for kind, p_has in (("box", 0.5), ("cloth", 0.3)):
        if rng.uniform() < p_has:
            w, h = rng.uniform(0.08, 0.16), rng.uniform(0.06, 0.14)
            props.append(Sprite(f"{kind}-prop", rng.uniform(0.1, 0.9), rng.uniform(0.15, 0.85), 1.0, 0.0,
                                _color(rng, (0.2, 0.8)), _color(rng), rx=w, ry=h))
    distractors = []
    for _ in range(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3])):
        kind = rng.choice(["circle", "square", "triangle", *OBJECTS])
        start = rng.uniform(0.05, 0.95, 2)
        vel = rng.uniform(-0.6, 0.6, 2) * (1, 0.4)
        distractors.append(dict(kind=str(kind), start=start, vel=vel, r=rng.uniform(0.04, 0.075),
                                angle=rng.uniform(0, 6.3), spin=rng.uniform(-2, 2), color=_color(rng),
                                detail=_color(rng), front=rng.uniform() < 0.4))
    n = size * SUPERSAMPLE
    steps = rng.normal(0, 0.006, (frames, 2))
    cam = np.clip(np.cumsum(steps, axis=0), -_PAD * 0.8, _PAD * 0.8)
    noise_sigma = rng.uniform(0.01, 0.035)
    gains = 1 + rng.normal(0, 0.03, frames)
    balance = rng.uniform(0.85, 1.15, 3)

    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    masks = np.empty((frames, size, size), dtype=np.uint8)
    for t in range(frames):
        tau = t / max(frames - 1, 1)
        p = float(_smoothstep((tau - a) / d))
        if prog.pretend:
            p = float(_smoothstep(1 - abs(2 * p - 1))) * m  # out part of the way and back
        acting = a - 0.06 <= tau <= a + d + 0.06
        sprites_back: list[Sprite] = list(props)
        sprites_front: list[Sprite] = []
        o = Sprite(obj, 0, 0, r, tilt, ocol, odet, MASK_OBJECT)
        hand = Sprite("hand", 0, 0, 0.065, 0.0, skin, skin * 0.8, MASK_HAND)
        if family == "lateral":
            o.x, o.y = P["x0"] + (P["x1"] - P["x0"]) * p, floor_y
            if obj == "ball":
                o.angle = tilt + (o.x - P["x0"]) / r  # rolling without slipping
            hand.x, hand.y = o.x - r * 0.9, o.y - r * 1.1
        elif family == "depth":
            s = P["s0"] + (P["s1"] - P["s0"]) * p
            o.x, o.y, o.r = P["x"], P["y0"] + (floor_y + 0.1 - P["y0"]) * p, r * s
            hand.x, hand.y, hand.r = o.x, o.y - o.r * 1.2, hand.r * s
        elif family == "box":
            box = Sprite("box", P["bx"], P["by"], 1.0, 0.0, P["bcol"], P["bcol"] * 0.7, MASK_PROP,
                         rx=P["bw"], ry=P["bh"])
            sprites_back.append(box)
            o.x = P["x0"] + (P["x1"] - P["x0"]) * p
            o.y = floor_y + (P["y1"] - floor_y) * p - P["lift"] * math.sin(math.pi * p)
            hand.x, hand.y = o.x, o.y - r * 1.3
        elif family == "cloth":
            o.x, o.y = P["x"], floor_y
            half = r * 1.7
            sx, sy = [(o.x, -half - 0.1), (-half - 0.1, o.y), (1 + half + 0.1, o.y)][P["side"]]
            cloth = Sprite("cloth", sx + (o.x - sx) * p, sy + (o.y - sy) * p, 1.0, 0.0, P["ccol"], P["cdet"],
                           MASK_PROP, rx=half, ry=half)
            sprites_front.append(cloth)
            ux, uy = (o.x - sx), (o.y - sy)
            norm = math.hypot(ux, uy)
            hand.x, hand.y = cloth.x - ux / norm * half, cloth.y - uy / norm * half
        elif family == "spin":
            o.x, o.y, o.r = P["x"], P["y"], r * 1.25
            o.angle = tilt + P["sweep"] * p  # image y points down: a growing angle turns clockwise on screen
            hand.x, hand.y = o.x + o.r * 1.1, o.y - o.r * 0.6
        elif family == "vertical":
            o.x, o.y = P["x"], floor_y + (P["y1"] - floor_y) * p
            hand.x, hand.y = o.x, o.y - r * 1.3
        for dd in distractors:
            pos = dd["start"] + dd["vel"] * tau
            pos = np.abs(np.mod(pos + 1, 2) - 1)  # bounce inside the frame
            sp = Sprite(dd["kind"], float(pos[0]), float(pos[1]), dd["r"], dd["angle"] + dd["spin"] * tau,
                        dd["color"], dd["detail"])
            (sprites_front if dd["front"] else sprites_back).append(sp)
        cy, cx = (int(round((_PAD + cam[t, 1]) * n)), int(round((_PAD + cam[t, 0]) * n)))
        canvas = Canvas(background, (cy, cx), size)
        for sp in sprites_back:
            canvas.paint(sp)
        canvas.paint(o)
        cloth_front = [sp for sp in sprites_front if sp.kind == "cloth"]
        for sp in cloth_front:
            canvas.paint(sp)
        if acting:
            canvas.paint(hand)
        for sp in sprites_front:
            if sp.kind != "cloth":
                canvas.paint(sp)
        img, mask = canvas.finish(size)
        img = img * balance * gains[t] + rng.normal(0, noise_sigma, img.shape)
        out[t] = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[t] = mask
    return out, masks


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def render_video(key: str, seed: int | Sequence[int], size: int = DEFAULTS["size"],
                 frames: int = DEFAULTS["frames"]) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [F, S, S, 3] and acting-object masks uint8 [F, S, S] of one video of class ``key``.

    The random draws depend only on ``seed`` and the (program family, object), so a reversed class rendered with
    the same seed is exactly its forward class played backwards.
    """
    if key not in _BY_KEY:
        raise KeyError(f"'{key}' is not a synthetic class; see `fsar-data info --dataset synthetic`")
    row = _BY_KEY[key]
    prog = PROGRAMS[row["program"]]
    base = prog.reverse_of or prog.name
    out, masks = _render(base, row["object"], _rng_of(key, seed), size, frames)
    if prog.reverse_of:
        out, masks = out[::-1].copy(), masks[::-1].copy()
    return out, masks


# ---------------------------------------------------------------- generation on disk

def default_root(videos_per_class: int = DEFAULTS["videos_per_class"], size: int = DEFAULTS["size"],
                 frames: int = DEFAULTS["frames"], seed: int = DEFAULTS["seed"]) -> Path:
    """``cache_root()/synthetic`` for the default parameters; a named sibling folder for any other setting."""
    from fsar.data.paths import cache_root

    if (videos_per_class, size, frames, seed) == tuple(DEFAULTS.values()):
        return cache_root() / "synthetic"
    return cache_root() / f"synthetic-{videos_per_class}v-{size}px-{frames}f-seed{seed}"


def _video_id(key: str, i: int) -> str:
    row = _BY_KEY[key]
    return f"{row['program']}-{row['object']}-{i:03d}"


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def ensure_synthetic(root: Path | str | None = None, videos_per_class: int = DEFAULTS["videos_per_class"],
                     size: int = DEFAULTS["size"], frames: int = DEFAULTS["frames"], seed: int = DEFAULTS["seed"],
                     classes: Sequence[str] | None = None, progress: bool = True, force: bool = False,
                     quiet: bool = False, workers: int | None = None) -> Path:
    """The folder of a synthetic benchmark with these parameters: generated (with a message) unless it exists.

    Layout: ``root/<class key>/<video id>.mp4`` + ``<video id>.masks.npz`` (uint8 [F, S, S]),
    ``root/splits/{train,val,test}.txt`` (``<class key>/<video id>`` lines), ``root/manifest.json``.
    Writing happens in a temporary sibling folder renamed into place at the end, so a killed run leaves nothing
    half-written. ``classes`` limits generation to some classes (tests). A folder made with other parameters is
    never overwritten unless ``force``. ``workers`` processes render in parallel (default: up to 2 CPUs); the
    output does not depend on it.
    """
    if size < 16 or size % 2:
        raise ValueError(f"--size must be an even number of pixels >= 16 (H.264 needs even sizes), got {size}")
    if frames < 2 or videos_per_class < 1:
        raise ValueError(f"need --frames >= 2 and --videos-per-class >= 1, got {frames} and {videos_per_class}")
    keys = list(classes) if classes is not None else [r["key"] for r in _TABLE]
    unknown = [k for k in keys if k not in _BY_KEY]
    if unknown:
        raise KeyError(f"'{unknown[0]}' is not a synthetic class; see `fsar-data info --dataset synthetic`")
    keys = [r["key"] for r in _TABLE if r["key"] in set(keys)]  # registry order
    root = Path(root) if root is not None else default_root(videos_per_class, size, frames, seed)
    params = dict(generator_version=GENERATOR_VERSION, videos_per_class=videos_per_class, size=size, frames=frames,
                  seed=seed, fps=FPS, classes=keys)

    def complete() -> bool:
        manifest = read_manifest(root)
        return manifest is not None and all(manifest.get(k) == v for k, v in params.items()) and not force

    if complete() and not _temp_folders(root):
        return root  # nothing to write: works on a read-only copy too
    from filelock import FileLock

    _check_writable(root.parent)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        for stale in _temp_folders(root):  # left by killed runs: no live run has one while we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if complete():
            return root
        manifest = read_manifest(root)
        if root.exists() and any(root.iterdir()) and not force:
            why = "was made with other parameters" if manifest else "is not a synthetic benchmark (no manifest.json)"
            raise FileExistsError(f"{root} {why}; pass another --out, or --force to replace it")
        if not quiet:
            print(f"Generating the synthetic benchmark ({len(keys)} classes x {videos_per_class} videos, "
                  f"{size}x{size}px, {frames} frames, seed {seed}) in {root} ...", file=sys.stderr)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        try:
            manifest = _generate(tmp, keys, params, progress, workers or min(2, os.cpu_count() or 1))
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not quiet:
            print(f"Wrote {manifest['num_videos']} videos in {manifest['seconds']:.1f} s "
                  f"({manifest['num_videos'] / max(manifest['seconds'], 1e-9):.1f} videos/s) to {root}",
                  file=sys.stderr)
    return root


def _temp_folders(root: Path) -> list[Path]:
    """The temporary folders (``.<name>.tmp-<pid>``) that runs generating ``root`` write into."""
    return sorted(root.parent.glob(f".{glob.escape(root.name)}.tmp-*")) if root.parent.is_dir() else []


def _check_writable(folder: Path) -> None:
    """Create ``folder`` and check that files can be written in it; a one-line PermissionError otherwise."""
    fix = "pass --out a writable folder, or set FSAR_CACHE to one"
    blocker = next((p for p in (*reversed(folder.parents), folder) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise PermissionError(f"cannot write the synthetic benchmark in {folder}: {blocker} is a file, not a folder; "
                              f"{fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write the synthetic benchmark in {folder} ({e.strerror or e}); {fix}") from None


def _exit_with_parent(parent: int) -> None:
    """Pool worker start-up: die with the generating process, even when it is killed with SIGKILL.

    A worker blocks reading its next job from the pool's pipe, and its own copy of the pipe's writing end keeps
    that read from ever ending, so without this an orphaned worker waits forever. On Linux the kernel sends the
    worker SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread checks the parent's pid
    every half second. Ctrl-C is left to the parent, which stops the pool.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


def _write_one(job: tuple[str, int, str, dict]) -> str:
    """Render, encode and write one video and its masks; returns its digest line for the fingerprint.

    The manifest's fingerprint hashes the .mp4 bytes and the masks: the encoding is deterministic
    (``encode_mp4``), so a regeneration with the same parameters, on the same PyAV build, has the same fingerprint.
    """
    import io

    from fsar.data.video import encode_mp4

    key, i, out, params = job
    vid = _video_id(key, i)
    frames, masks = render_video(key, [params["seed"], _stable_int(key), i], params["size"], params["frames"])
    folder = Path(out) / key
    folder.mkdir(parents=True, exist_ok=True)
    data = encode_mp4(frames, fps=params["fps"])
    (folder / f"{vid}.mp4").write_bytes(data)
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=masks)
    (folder / f"{vid}.masks.npz").write_bytes(buf.getvalue())
    return f"{key}/{vid}:{hashlib.sha256(data).hexdigest()}:{hashlib.sha256(masks.tobytes()).hexdigest()}"


def _generate(out: Path, keys: list[str], params: dict, progress: bool, workers: int) -> dict:
    """Write every video, mask file, split list and the manifest into ``out`` (videos in ``workers`` processes)."""
    from fsar.data.progress import track

    start = time.perf_counter()
    info = get_dataset("synthetic")
    jobs = [(k, i, str(out), params) for k in keys for i in range(params["videos_per_class"])]
    if workers > 1 and len(jobs) >= 8 * workers:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_exit_with_parent,
                                   initargs=(os.getpid(),))
        try:
            digests = list(track(pool.map(_write_one, jobs, chunksize=8), "synthetic videos", enabled=progress,
                                 total=len(jobs)))
        except BrokenProcessPool:
            raise RuntimeError("a worker process generating the synthetic videos died (killed, or out of memory?); "
                               "nothing was kept; run again, with --workers 1 if it happens again") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: finish the videos in progress, start no more
    else:
        digests = [_write_one(job) for job in track(jobs, "synthetic videos", enabled=progress)]
    split_lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for key, i, _, _ in jobs:
        split_lines[info.by_key(key).split].append(f"{key}/{_video_id(key, i)}")
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for split, lines in split_lines.items():
        (out / "splits" / f"{split}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    seconds = time.perf_counter() - start
    manifest = dict(params, num_videos=len(jobs), seconds=round(seconds, 2), workers=workers,
                    splits={s: len(v) for s, v in split_lines.items()},
                    fingerprint=hashlib.sha256("\n".join(digests).encode()).hexdigest()[:16],
                    mask_values={"background": 0, "object": MASK_OBJECT, "hand": MASK_HAND, "box or cloth": MASK_PROP},
                    programs={k: [_BY_KEY[k]["program"], _BY_KEY[k]["object"]] for k in keys})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def _rng_of(key: str, seed: int | Sequence[int]) -> np.random.Generator:
    """The generator ``render_video`` draws a video of class ``key`` from (forward program's family and object)."""
    row = _BY_KEY[key]
    prog = PROGRAMS[row["program"]]
    base = prog.reverse_of or prog.name
    seeds = [seed] if isinstance(seed, int) else list(seed)
    return np.random.default_rng(seeds + [_stable_int(f"{PROGRAMS[base].family}/{row['object']}")])


def action_span(record) -> tuple[float, float]:
    """(onset, offset) of the action in a synthetic video, as fractions of the clip (frame t sits at t / (F - 1)).

    Derived from the generator's seed (the manifest's seed, the class key and the video's index) by replaying the
    draws ``_render`` makes before the timing, so neither the videos nor the fingerprint change. A reversed class
    plays its forward program backwards, so its span is mirrored: (1 - a - d, 1 - a).
    """
    from fsar.core.errors import FsarError

    root = Path(getattr(record, "root", "") or Path(record.path).parent.parent)
    manifest = read_manifest(root)
    if manifest is None:
        raise FsarError(f"no readable manifest.json in {root}; regenerate with `fsar-data synth --root {root}`")
    key, vid = record.class_key, record.video_id
    i = int(vid.rsplit("-", 1)[1])
    rng = _rng_of(key, [manifest["seed"], _stable_int(key), i])
    *_, a, d = _appearance_and_timing(rng, manifest["size"])
    if PROGRAMS[_BY_KEY[key]["program"]].reverse_of:
        return float(1 - a - d), float(1 - a)
    return float(a), float(a + d)


def mask_path(record) -> Path:
    """Where the masks of a synthetic video live: ``<video id>.masks.npz`` next to the .mp4."""
    path = Path(getattr(record, "path", record))
    return path.with_name(path.stem + ".masks.npz")


def load_masks(record) -> np.ndarray:
    """Per-frame acting-object masks of a synthetic video, uint8 [F, S, S] (1 object, 2 hand, 3 box or cloth)."""
    path = mask_path(record)
    if not path.is_file():
        raise FileNotFoundError(f"no masks at {path}; masks exist only for the synthetic benchmark")
    with np.load(path) as data:
        return data["masks"]


def load_clip_with_masks(record, num_frames: int = 8, train: bool = False, size: int = 112, generator=None,
                         flip: bool | None = None):
    """``load_clip`` plus the acting-object masks of the same frames, crop and flip: (uint8 [T, 3, S, S],
    float [T, S, S] in 0..1, the fraction of each pixel covered by an acting part: object, hand, box or cloth).

    With the same generator state it returns the very clip that ``load_clip`` returns.
    """
    import torch

    from fsar.data.video import sample_frames, transform_clip

    frames, idx = sample_frames(record.path, num_frames, train, generator)
    masks = load_masks(record)
    acting = torch.from_numpy((masks[idx] > 0).astype(np.float32)).unsqueeze(1)  # t h w -> t 1 h w
    clip, m = transform_clip(frames, record, train, size, generator, flip, extra=acting)
    return clip, m.squeeze(1)


def write_preview(root: Path | str, path: Path | str, num_frames: int = 8) -> Path:
    """A PNG contact sheet: one video per motion program (decoded from the .mp4 files), frame by frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fsar.data.paths import atomic_write_bytes
    from fsar.data.video import read_frames

    root, path = Path(root), Path(path)
    manifest = read_manifest(root) or {}
    keys = manifest.get("classes", [])
    picked, seen = [], set()
    for key in keys:  # first generated class of each program
        prog = _BY_KEY[key]["program"]
        if prog not in seen:
            seen.add(prog)
            picked.append(key)
    fig, axes = plt.subplots(len(picked), num_frames, figsize=(num_frames * 1.1, len(picked) * 1.25), squeeze=False)
    for row, key in enumerate(picked):
        frames = read_frames(root / key / f"{_video_id(key, 0)}.mp4", num_frames)
        for col in range(num_frames):
            ax = axes[row, col]
            ax.imshow(frames[col])
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_title(key, fontsize=7, loc="left")
    fig.suptitle(f"synthetic benchmark (seed {manifest.get('seed')}): one video per motion program", fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
