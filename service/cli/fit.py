"""`labelrank fit`: one command from a catalog, with or without examples, to a tuned,
calibrated index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from


def fit(
    catalog: Annotated[Path, typer.Argument(help="Catalog, JSONL or CSV.")],
    examples: Annotated[list[Path] | None, typer.Option(
        "--examples", "-e", help="Labeled JSONL/CSV: more examples (besides the catalog's own); "
                                 "the dev split comes from them all when there is no --dev.")]
    = None,
    dev: Annotated[Path | None, typer.Option(
        help="Labeled dev file to choose on (default: a held-out share of the examples, or "
             "with too few examples, pseudo-queries of labels held out of tuning).")]
    = None,
    db: DbOpt = None,
    minutes: Annotated[float, typer.Option(
        min=0, help="Time budget for the whole run; tuning gets what the other stages leave.")]
    = 20.0,
    none_share: Annotated[float | None, typer.Option(
        min=0, max=0.95, help="Expected share of out-of-scope texts in traffic (default: that "
                              "of --dev, or of all the examples; needs out-of-scope dev texts)."
    )] = None,
    dev_share: Annotated[float, typer.Option(
        min=0.05, max=0.5, help="Share of each label's examples held out as dev (or of the "
                                "labels, for pseudo-queries).")] = 0.2,
    max_pairs: Annotated[int | None, typer.Option(min=1, help="Tune on at most N pairs.")]
    = None,
    min_texts_per_s: Annotated[float, typer.Option(
        help="Only settings at least this fast are chosen.")] = 0.0,
) -> None:
    """Tune the embedder on the examples and the catalog's own texts (kept only if it wins on
    dev), index with prototypes, calibrate."""
    from service.jobs.fit import FitConfig
    from service.jobs.fit import fit as run_fit

    config = FitConfig(minutes=minutes, none_share=none_share, dev_share=dev_share,
                       max_pairs=max_pairs, min_texts_per_s=min_texts_per_s)
    settings = settings_from(db)
    report = run_fit(settings, catalog, examples or [], dev, config,
                     progress=lambda line: typer.echo(line, err=True))
    for line in report.skipped_rows[:20]:
        typer.echo(f"skipped {line}", err=True)
    scope = (f"thresholds set for {report.none_share:.0%} out-of-scope traffic"
             if report.none_share is not None else
             "no out-of-scope dev text: thresholds set for in-scope texts only")
    dev = report.dev
    made = (f"pseudo-queries of {dev['labels_held_out_of_tuning']} labels held out of tuning"
            if "labels_held_out_of_tuning" in dev else dev.get("name", "dev texts"))
    own = (f", {dev['labels_taken_out_of_scope']} labels taken out of the catalog to make "
           "out-of-scope dev texts" if dev.get("labels_taken_out_of_scope") else "")
    typer.echo(f"\nexamples: {report.train_texts} indexed; dev: {report.dev_texts} {made}"
               f"{own}; {scope}")
    if report.pairs:
        typer.echo("tuning pairs: " + ", ".join(f"{n} {kind}" for kind, n in
                                                report.pairs.items()))
    typer.echo(f"model kept: {report.model} ({report.why})")
    for name, figures in (("base", report.base), ("tuned", report.tuned)):
        if figures:
            typer.echo(f"  {name:<6} dev {figures['metric']} {figures['value']:.4f}, candidate "
                       f"recall {figures['candidate_recall']:.4f}: {figures['setting']}")
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report.seconds.items())
    typer.echo(f"time: {stages}" + (f" (reused: {', '.join(report.reused)})"
                                     if report.reused else ""))
    if report.budget:
        typer.echo(f"budget: {report.budget['minutes']:g} min; tuning got "
                   f"{report.budget['tune_s']:.0f} s, the stages after it were estimated at "
                   f"{report.budget['after_tuning_estimate_s']:.0f} s")
    typer.echo(f"index ready in {settings.db}: labelrank classify \"...\" --db {settings.db}")


def register(app: typer.Typer) -> None:
    """Add `fit` to the command tree."""
    app.command()(fit)
