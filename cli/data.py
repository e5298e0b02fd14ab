"""``fsar-data``: inspect a video benchmark (``info``) and generate the synthetic one (``synth``)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

import typer

from fsar.cli.common import console, fail, out
from rich.table import Table

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
    """Print the classes, videos per class and split, and the unreadable files of a data set."""
    from fsar.data.loaders import fingerprint, scan
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
        fail(e.args[0])
    summary = Table(title=f"{ds.name}: {ds.description}")
    for col in ("split", "classes", "with videos", "videos", "min/median/max per class", "missing", "unreadable"):
        summary.add_column(col, justify="right" if col != "split" else "left")
    all_bad, all_records = [], []
    for s in splits:
        try:
            listing = scan(ds, root, s, split_file)
        except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
            fail(e.args[0] if e.args else str(e))
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
        if classes:
            t = Table(title=f"{s} classes")
            t.add_column("label", justify="right")
            t.add_column("class")
            t.add_column("videos", justify="right")
            for c in ds.split(s):
                t.add_row(str(c.index), c.key, str(counts[c.key]))
            out.print(t)
        for m in listing.missing[:10]:
            console.print(f"[yellow]missing[/] {m}", highlight=False)
    out.print(summary)
    if all_records:
        out.print(f"data root: {all_records[0].root}   fingerprint: {fingerprint(all_records)}", highlight=False)
    for rec, reason in all_bad:
        out.print(f"[red]unreadable[/] {rec.path}: {reason}", highlight=False)


@app.command()
def synth(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="target folder (default: <cache>/synthetic for the default settings)"),
    videos_per_class: int = typer.Option(20, "--videos-per-class", min=1, help="videos per class"),
    size: int = typer.Option(64, "--size", min=16, help="frame width and height in pixels (even)"),
    frames: int = typer.Option(16, "--frames", min=2, help="frames per video"),
    seed: int = typer.Option(0, "--seed", help="generation seed"),
    force: bool = typer.Option(False, "--force", help="replace a folder made with other settings"),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="write preview.png (a few classes, frame by frame)"),
):
    """Generate the synthetic action-video benchmark (real .mp4 files, split lists, masks, manifest)."""
    from fsar.data.synthetic import ensure_synthetic, read_manifest, write_preview

    try:
        root = ensure_synthetic(out_dir, videos_per_class=videos_per_class, size=size, frames=frames, seed=seed,
                                force=force)
    except (ValueError, FileExistsError, KeyError) as e:
        fail(e.args[0])
    manifest = read_manifest(root)
    if preview:
        write_preview(root, root / "preview.png")
    out.print(f"synthetic benchmark: {root}", highlight=False)
    out.print(f"  {len(manifest['classes'])} classes, {manifest['num_videos']} videos "
              f"(train/val/test {manifest['splits']['train']}/{manifest['splits']['val']}/{manifest['splits']['test']}), "
              f"{manifest['size']}px, {manifest['frames']} frames, seed {manifest['seed']}, "
              f"fingerprint {manifest['fingerprint']}", highlight=False)
    if preview:
        out.print(f"  preview: {root / 'preview.png'}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
