"""`labelrank tune`: fine-tune the index's embedder and say how to re-index with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import settings_from


def tune(
    examples: Annotated[Path, typer.Option(
        "--examples", "-e", help="Labelled JSONL/CSV of the index's labels (train split).")],
    dev: Annotated[Path | None, typer.Option(
        help="Labelled dev file: nearest-label accuracy before and after.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the pairs.")] = 1,
    out: Annotated[Path, typer.Option(
        help="New (empty) directory for the tuned model; never overwritten.")]
    = Path("labelrank-model-tuned"),
    db: Annotated[Path | None, typer.Option(
        "--db", help="Index to mine hard negatives from (built with the model to tune).")]
    = None,
    max_pairs: Annotated[int | None, typer.Option(
        min=1, help="Train on at most N pairs (a random sample).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Pairs per step.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-5,
    minutes: Annotated[float | None, typer.Option(
        min=0, help="Stop training after this long (what was learnt is kept).")] = None,
) -> None:
    """Fine-tune the embedder on labelled texts (in-batch + mined hard negatives)."""
    from retrieval.tune.train import TuneConfig
    from retrieval.tune.train import tune as tune_embedder
    from service.factory import build_index

    settings = settings_from(db)
    index = build_index(settings)
    config = TuneConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                        max_pairs=max_pairs, max_seconds=minutes * 60 if minutes else None)
    report = tune_embedder(index, examples, out, config, dev=dev)
    typer.echo(
        f"tuned {report.base_model} on {report.pairs} pairs ({report.label_pairs} text-label, "
        f"{report.pairs - report.label_pairs} text-text; hard negatives: "
        f"{report.mined_negatives} mined, {report.random_negatives} random), {report.steps} "
        f"of {report.planned_steps} steps; mining {report.mining_s:.0f} s, "
        f"training {report.training_s:.0f} s", err=True)
    if report.dev_accuracy_before is not None:
        typer.echo(f"dev nearest-label accuracy ({report.dev_texts} texts): "
                   f"{report.dev_accuracy_before:.4f} -> {report.dev_accuracy_after:.4f}",
                   err=True)
    typer.echo(f"saved to {out}; re-index into a new directory (the old index refuses the new "
               f"model):\n  LABELRANK_EMBEDDER={out.resolve()} labelrank index CATALOG "
               "--examples EXAMPLES --db NEW_DB", err=True)


def register(app: typer.Typer) -> None:
    """Add `tune` to the command tree."""
    app.command()(tune)
