"""``fsar-data``: inspect a video benchmark (``info``) and generate the synthetic one (``synth``)."""
from __future__ import annotations

import statistics
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fsar.cli.common import console, error_message, fail, out, run_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Stage 2 data: video benchmarks.")


@app.command()
def info(
    dataset: str = typer.Option(..., "--dataset", "-d", help="hmdb51, ucf101, kinetics100, ssv2_small, ssv2_full, synthetic"),
    root: Optional[Path] = typer.Option(None, "--root", help="data folder (not needed for synthetic: the default set is generated on demand)"),
    split: str = typer.Option("all", help="train, val, test or all"),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="a split list ('<class>/<id>' or '<split><index>/<id>' lines); needs --split train|val|test"),
    check: bool = typer.Option(True, "--check/--no-check", help="decode every video to find unreadable ones"),
    classes: bool = typer.Option(True, "--classes/--no-classes", help="print the per-class table"),
):
    """Print the classes, videos per class and split, and the unreadable files of a data set.

    Every split is reported, also when some have no videos under the root: the table says what each split has,
    and a line per split names the classes it lacks.
    """
    from fsar.data.loaders import LAYOUTS, fingerprint, scan
    from fsar.data.registry import get_dataset
    from fsar.data.video import filter_readable

    splits = ["train", "val", "test"] if split == "all" else [split]
    if split not in ("all", "train", "val", "test"):
        fail(f"unknown split '{split}'; choose train, val, test or all")
    if split_file is not None and split == "all":
        fail("--split-file lists one split; say which with --split train|val|test")
    try:
        ds = get_dataset(dataset)
    except KeyError as e:
        fail(error_message(e))
    if root is not None and not root.expanduser().is_dir():
        what = "is a file, expected a folder" if root.expanduser().exists() else "does not exist"
        fail(f"data root {root} {what}; expected {LAYOUTS}")
    summary = Table(title=escape(f"{ds.name}: {ds.description}"))
    for col in ("split", "classes", "with videos", "videos", "min/median/max per class", "missing", "unreadable"):
        summary.add_column(col, justify="right" if col != "split" else "left")
    all_bad, all_records, notes = [], [], []
    for s in splits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scan's warnings about absent folders: said below, more completely
            try:
                listing = scan(ds, root, s, split_file)
            except FileNotFoundError as e:
                if root is None or split_file is not None:
                    fail(error_message(e))
                first = ds.split(s)[0].key
                notes.append(f"{s}: no folder for any of its {len(ds.split(s))} classes under {root} (e.g. '{first}')")
                summary.add_row(s, str(len(ds.split(s))), "0", "0", "-", "-", "-")
                continue
            except (ValueError, FileExistsError, KeyError, RuntimeError, OSError) as e:
                fail(error_message(e))
        records = listing.records
        bad = []
        if check and records:
            _, bad = filter_readable(records, progress=True, warn=False)
        all_bad += bad
        all_records += records
        counts = {c.key: 0 for c in ds.split(s)}
        for r in records:
            counts[r.class_key] += 1
        per = sorted(counts.values())
        summary.add_row(s, str(len(counts)), str(sum(1 for v in per if v)), str(len(records)),
                        f"{per[0]}/{statistics.median(per):g}/{per[-1]}" if per else "-",
                        str(len(listing.missing)), str(len(bad)) if check else "not checked")
        empty = [k for k, v in counts.items() if not v]
        if empty:
            more = f", ... ({len(empty) - 10} more)" if len(empty) > 10 else ""
            notes.append(f"{s}: no videos for {len(empty)} of {len(counts)} classes: {', '.join(empty[:10])}{more}")
        if classes:
            t = Table(title=f"{s} classes")
            t.add_column("label", justify="right")
            t.add_column("class")
            t.add_column("videos", justify="right")
            for c in ds.split(s):
                t.add_row(str(c.index), escape(c.key), str(counts[c.key]))
            out.print(t)
        for m in listing.missing[:10]:
            console.print(Text.assemble(("missing", "yellow"), f" {m}"), highlight=False, soft_wrap=True)
    out.print(summary)
    if all_records:
        out.print(f"data root: {all_records[0].root}   fingerprint: {fingerprint(all_records)}", markup=False,
                  highlight=False, soft_wrap=True)
    for rec, reason in all_bad:
        out.print(Text.assemble(("unreadable", "red"), f" {rec.path}: {reason}"), highlight=False, soft_wrap=True)
    for note in notes:
        console.print(Text.assemble(("note:", "yellow"), f" {note}"), highlight=False, soft_wrap=True)
    if not all_records:
        fail(f"no videos of {ds.name} found under {root}; expected {LAYOUTS}")


@app.command()
def synth(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="target folder (default: <cache>/synthetic for the default settings)"),
    videos_per_class: int = typer.Option(20, "--videos-per-class", min=1, help="videos per class"),
    size: int = typer.Option(64, "--size", min=16, help="frame width and height in pixels (even)"),
    frames: int = typer.Option(16, "--frames", min=2, help="frames per video"),
    seed: int = typer.Option(0, "--seed", help="generation seed"),
    workers: int = typer.Option(0, "--workers", min=0, help="processes that render videos (0: one per CPU, at most 2); the videos do not depend on it"),
    force: bool = typer.Option(False, "--force", help="replace a folder made with other settings"),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="write preview.png (a few classes, frame by frame) if it is missing"),
):
    """Generate the synthetic action-video benchmark (real .mp4 files, split lists, masks, manifest)."""
    from fsar.data.synthetic import ensure_synthetic, read_manifest, write_preview

    try:
        root = ensure_synthetic(out_dir, videos_per_class=videos_per_class, size=size, frames=frames, seed=seed,
                                force=force, workers=workers or None)
        manifest = read_manifest(root)
        if preview and not (root / "preview.png").is_file():
            write_preview(root, root / "preview.png")
    except (ValueError, FileExistsError, KeyError, RuntimeError, OSError) as e:
        fail(error_message(e))
    out.print(f"synthetic benchmark: {root}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"  {len(manifest['classes'])} classes, {manifest['num_videos']} videos "
              f"(train/val/test {manifest['splits']['train']}/{manifest['splits']['val']}/{manifest['splits']['test']}), "
              f"{manifest['size']}px, {manifest['frames']} frames, seed {manifest['seed']}, "
              f"fingerprint {manifest['fingerprint']}", markup=False, highlight=False, soft_wrap=True)
    if preview:
        out.print(f"  preview: {root / 'preview.png'}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def masks(
    dataset: str = typer.Option(..., "--dataset", "-d", help="the data set whose videos get masks"),
    root: Optional[Path] = typer.Option(None, "--root", help="data folder (not needed for synthetic); only read"),
    segmenter: str = typer.Option("clipseg", "--segmenter", help="text-guided segmenter (clipseg)"),
    segmenter_path: Optional[Path] = typer.Option(None, "--segmenter-path", help="local copy of CIDAS/clipseg-rd64-refined"),
    prompt: str = typer.Option("name", "--prompt", help="name: the class name; knowledge: the class name and the "
                               "object its stored dist knowledge names first (fsar-knowledge generate --kind dist)"),
    split: str = typer.Option("all", "--split", help="train, val, test or all"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
):
    """Write acting-object masks (uint8 [F, 64, 64]) of each video beside the frame cache with a text-guided segmenter."""
    from fsar.core.errors import FsarError
    from fsar.data.loaders import list_videos
    from fsar.data.masks import class_prompts, load_segmenter, mask_file, mask_folder, write_masks

    if segmenter != "clipseg":
        fail(f"unknown --segmenter '{segmenter}'; known: clipseg")
    try:
        splits = ["train", "val", "test"] if split == "all" else [split]
        records = [r for s in splits for r in list_videos(dataset, root, s)]
        prompts = class_prompts(dataset, {r.class_key for r in records}, prompt)
        model, processor = load_segmenter(segmenter_path)
        name = f"clipseg:{segmenter_path.name if segmenter_path else 'CIDAS/clipseg-rd64-refined'}"
        counts = write_masks(records, prompts, model, processor, name, progress=progress)
        folder = mask_file(records[0]).parent if records else mask_folder()
    except (FsarError, ValueError, KeyError, OSError) as e:
        fail(error_message(e))
    out.print(f"masks: {counts['written']} written, {counts['skipped']} already current, "
              f"{counts['unreadable']} unreadable videos skipped ({len(records)} videos, prompt: {prompt}) in {folder}",
              markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    run_cli(app, prog_name="fsar-data")


if __name__ == "__main__":
    main()
