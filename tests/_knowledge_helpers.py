"""Shared fixtures for the embed / search / report tests: a tiny registered data set and hand-written knowledge sets."""
from __future__ import annotations

import json
from pathlib import Path

from fsar.data.registry import build_dataset, register_dataset
from fsar.knowledge.store import save_knowledge

DATASET = "tiny6"
MODEL = "handwritten"
# train 3, val 1, test 2; registry order = this order
SPLITS = {"train": ["brush_hair", "dribble", "ride_bike"], "val": ["pour"], "test": ["golf", "push_up"]}

DIST = {
    "brush_hair": {
        "spatial": ["a hairbrush held in one hand", "long hair on the head", "a bathroom mirror", "a raised arm near the head"],
        "temporal": ["the brush strokes down the hair", "repeated downward strokes", "the hand lifts the brush back up", "the hair becomes smooth"],
    },
    "dribble": {
        "spatial": ["a basketball", "a wooden basketball court", "a bent arm and an open palm"],  # 3 spatial: masks pad
        "temporal": ["the ball bounces off the floor", "the palm pushes the ball down", "the ball returns to the hand", "the player keeps running while bouncing"],
    },
    "ride_bike": {
        "spatial": ["a bicycle with two wheels", "handlebars gripped by both hands", "a road or bike path", "a helmet on the head"],
        "temporal": ["the feet push the pedals in circles", "the wheels roll forward", "the rider balances and steers", "the bike gains speed"],
    },
    "pour": {
        "spatial": ["a bottle or jug", "a glass on a table", "liquid in a container", "a tilted wrist"],
        "temporal": ["the container tilts over the glass", "liquid flows out in a stream", "the glass fills up", "the container turns upright again"],
    },
    "golf": {
        "spatial": ["a golf club", "a small white golf ball", "green grass of a golf course", "gloved hands on the grip"],
        "temporal": ["the club swings back over the shoulder", "the club swings down and strikes the ball", "the ball flies into the air", "the body turns through the follow-through"],
    },
    "push_up": {
        "spatial": ["hands flat on the floor", "a straight body in plank position", "an exercise mat", "bent elbows"],
        "temporal": ["the chest lowers toward the floor", "the arms push the body back up", "the movement repeats in a rhythm", "the body stays straight throughout"],
    },
}

LGA_STAGES = {
    "brush_hair": [("person", "lifts", "hairbrush", "The person lifts a hairbrush to the top of the head."),
                   ("brush", "strokes", "hair", "The brush is pulled down through the hair in long strokes."),
                   ("person", "lowers", "hairbrush", "The person lowers the brush once the hair is smooth.")],
    "dribble": [("player", "pushes", "basketball", "The player pushes the basketball down toward the floor."),
                ("ball", "bounces", "floor", "The ball bounces off the court and rises back up."),
                ("hand", "catches", "ball", "The hand meets the ball and controls it again.")],
    "ride_bike": [("rider", "mounts", "bicycle", "The rider swings a leg over the bicycle and sits down."),
                  ("feet", "turn", "pedals", "The feet turn the pedals and the bicycle rolls forward."),
                  ("rider", "brakes", "bicycle", "The rider squeezes the brakes and the bicycle stops.")],
    "pour": [("hand", "lifts", "bottle", "The hand lifts a bottle above a glass."),
             ("bottle", "tilts", "glass", "The bottle tilts and liquid streams into the glass."),
             ("hand", "sets", "bottle", "The hand sets the bottle upright on the table.")],
    "golf": [("golfer", "swings", "club", "The golfer swings the club back over the shoulder."),
             ("club", "strikes", "ball", "The club head strikes the golf ball on the ground."),
             ("ball", "flies", "fairway", "The ball flies away toward the green.")],
    "push_up": [("person", "lowers", "chest", "The person bends the elbows and lowers the chest to the floor."),
                ("arms", "push", "body", "The arms push the straight body back up."),
                ("person", "holds", "plank", "The person holds the plank position at the top.")],
}


def register_tiny() -> None:
    register_dataset(build_dataset(DATASET, SPLITS, description="six classes for tests"))


def class_rows() -> list[tuple[int, str, str, str]]:
    """(index, key, name, split) in registry order."""
    from fsar.data.registry import get_dataset

    register_tiny()
    return [(c.index, c.key, c.name, c.split) for c in get_dataset(DATASET).classes]


def provenance(attempts: int = 1, model: str = MODEL) -> dict:
    return {"backend": "handwritten", "model": model, "attempts": attempts, "template": "dist.jinja", "template_hash": "test"}


def make_row(index: int, key: str, name: str, split: str, knowledge: dict | None, attempts: int = 1) -> dict:
    ok = knowledge is not None
    return {
        "class_key": key,
        "class_name": name,
        "split": split,
        "index": index,
        "status": "ok" if ok else "failed",
        "knowledge": knowledge,
        "raw_outputs": [] if ok else ["{not json"] * attempts,
        "errors": [] if ok else ["answer is not valid JSON"] * attempts,
        "provenance": provenance(attempts),
    }


def save_dist(knowledge: dict[str, dict] | None = None, failed: tuple[str, ...] = (), attempts: dict[str, int] | None = None, model: str = MODEL):
    """A dist knowledge set of the tiny data set; classes in ``failed`` are stored as failed."""
    knowledge = DIST if knowledge is None else knowledge
    attempts = attempts or {}
    rows = [make_row(i, k, n, s, None if k in failed else knowledge[k], attempts.get(k, 3 if k in failed else 1))
            for i, k, n, s in class_rows() if k in knowledge or k in failed]
    return save_knowledge(DATASET, "dist", model, rows)


def save_lga(model: str = MODEL):
    rows = []
    for i, k, n, s in class_rows():
        stages = [{"stage": st, "subject": a, "motion": b, "object": c, "sentence": d}
                  for st, (a, b, c, d) in zip(("onset", "progression", "completion"), LGA_STAGES[k])]
        rows.append(make_row(i, k, n, s, {"stages": stages}))
    return save_knowledge(DATASET, "lga", model, rows)


def save_star(model: str = MODEL, short: str = "golf"):
    """star knowledge made from the dist texts (descriptors = temporal phrases); ``short`` gets 2 descriptors."""
    rows = []
    for i, k, n, s in class_rows():
        desc = [t.capitalize() + "." for t in DIST[k]["temporal"]]
        if k == short:
            desc = desc[:2]
        rows.append(make_row(i, k, n, s, {"descriptors": desc, "summary": f"A person performs the action: {n}, step by step."}))
    return save_knowledge(DATASET, "star", model, rows)


def build_tiny_clip(folder: Path) -> Path:
    """A tiny, randomly initialised CLIP (real transformers code) with a character-level tokenizer and NO token limit
    set on the tokenizer: 77 position embeddings, so any text over 77 tokens would crash an unprotected encoder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = [chr(b) for b in keep] + [chr(256 + i) for i in range(256 - len(keep))]  # byte-level BPE alphabet
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    image = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(folder)
    return folder
