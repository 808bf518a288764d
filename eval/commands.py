"""The eval harness's commands: eval, compare, calibrate, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, TopKOpt, parse_mode, settings_from

DatasetArg = Annotated[Path, typer.Argument(help="Gold JSONL: {text, labels: [...]} per line.")]
HalfOpt = Annotated[str | None, typer.Option(
    help="Use only half a or b of the dataset (stable by id): calibrate on a, report on b.")]


def eval_command(
    dataset: DatasetArg,
    db: DbOpt = None,
    mode: Annotated[str, typer.Option(help="llm | retrieval")] = "retrieval",
    prompt: Annotated[str | None, typer.Option(help="Prompt as task@version.")] = None,
    top_k: TopKOpt = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N texts.")] = None,
    sample: Annotated[int | None, typer.Option(
        help="A stable pseudo-random sample of N texts (by a hash of their id).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for run files.")] = Path("eval/runs"),
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass both caches.")] = False,
    label: Annotated[str, typer.Option(help="A note stored in the run file.")] = "",
    half: HalfOpt = None,
) -> None:
    """Score the pipeline on a gold set; print metrics and save a run file."""
    from eval.datasets import load_dataset
    from eval.run import EvalConfig, run_eval, save_run
    from prompts.answer_cache import CACHE_DIR
    from service.engine import open_engine

    if mode not in ("llm", "retrieval"):
        raise typer.BadParameter("--mode must be llm or retrieval")
    engine = open_engine(settings_from(db, prompt=prompt))
    config = EvalConfig(mode=parse_mode(mode), top_k=top_k, out_dir=out, label=label,
                        cache_dir=None if no_cache else CACHE_DIR)
    run = run_eval(engine, load_dataset(dataset, limit, half, sample), config)
    path = save_run(run, out)
    typer.echo(format_metrics(run))
    typer.echo(f"\nrun saved to {path}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="Run file A (the baseline).")],
    run_b: Annotated[Path, typer.Argument(help="Run file B.")],
    flips: Annotated[int, typer.Option(help="How many changed texts to list.")] = 20,
) -> None:
    """Metric deltas between two runs and the texts whose outcome changed."""
    from eval.compare import render_comparison
    from eval.run import load_run

    typer.echo(render_comparison(load_run(run_a), load_run(run_b), run_a.name, run_b.name,
                                 max_flips=flips))


def calibrate(
    dataset: Annotated[Path | None, typer.Argument(
        help="Gold JSONL: {text, labels: [...]} per line (or --self).")] = None,
    db: DbOpt = None,
    self_: Annotated[bool, typer.Option(
        "--self", help="Calibrate on pseudo-queries made from the catalog, no labeled data.")
    ] = False,
    metric: Annotated[str, typer.Option(
        help="auto (accuracy for single-label, else f1_samples), f1_samples, jaccard, "
             "accuracy, f1_micro or candidate_recall")] = "auto",
    top_k: TopKOpt = None,
    min_texts_per_s: Annotated[float | None, typer.Option(
        "--min-texts-per-s", help="Never choose a setting slower than this "
        "(default: LABELRANK_CALIBRATION_MIN_TEXTS_PER_S).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, do not save.")] = False,
    half: HalfOpt = None,
    seconds: Annotated[float | None, typer.Option(
        "--seconds", min=0, help="With --self: after this many seconds of work (counted as a "
        "2-core reference machine does it: the same stop on any machine), try no further costly "
        "stage (the grid always finishes; the summary names what was left). Default: no limit "
        "(the self-calibration `index` runs is bounded by LABELRANK_SELF_CALIBRATION_SECONDS).")
    ] = None,
    none_share: Annotated[float | None, typer.Option(
        "--none-share", min=0, max=0.95, help="With --self: the share of texts in your "
        "traffic that have no label; the out-of-scope pseudo-queries are weighed as that share "
        "(default: LABELRANK_SELF_CALIBRATION_NONE_SHARE, else as many as they are).")
    ] = None,
    multi_share: Annotated[float | None, typer.Option(
        "--multi-share", min=0, max=0.9, help="With --self: the share of texts in your traffic "
        "that have several labels; that share of the pseudo-queries joins two or three labels' "
        "texts (0 for single-label traffic; default: LABELRANK_SELF_CALIBRATION_MULTI_SHARE, "
        "0.4).")
    ] = None,
) -> None:
    """Search every retrieval lever and the threshold on a dev set (labeled, or made from the
    catalog with --self); print each setting's score and texts/s; save the best with the index."""
    from eval.calibrate import calibrate as run_calibration
    from eval.calibrate import format_calibrations, labeled_record
    from eval.datasets import load_dataset
    from service.engine import open_engine
    from service.jobs.self_calibration import self_calibrate, summary

    if (dataset is None) == (not self_):
        raise typer.BadParameter("give a labeled DATASET or --self, not both")
    if seconds is not None and not self_:
        raise typer.BadParameter("--seconds bounds --self only")
    if none_share is not None and not self_:
        raise typer.BadParameter("--none-share weighs --self's pseudo-queries only (a labeled "
                                 "dev set weighs its own out-of-scope texts as they are)")
    if multi_share is not None and not self_:
        raise typer.BadParameter("--multi-share shapes --self's pseudo-queries only (a labeled "
                                 "dev set has the label counts it has)")
    engine = open_engine(settings_from(db))
    floor = (engine.settings.calibration_min_texts_per_s if min_texts_per_s is None
             else min_texts_per_s)
    if dataset is None:
        found = self_calibrate(engine.settings, engine.index, min_texts_per_s=floor,
                               budget_s=seconds, progress=True, none_share=none_share,
                               multi_share=multi_share)
        best, results, record = found.best, found.results, found.record
        typer.echo(summary(found), err=True)
    else:
        data = load_dataset(dataset, half=half)
        best, results = run_calibration(engine.pipeline, data, metric, top_k,
                                        min_texts_per_s=floor, settings=engine.settings)
        record = labeled_record(best, data)
    if best is not None:
        typer.echo(format_calibrations(best, results))
        if best.texts_per_s < floor:
            typer.echo(f"no setting reached {floor:g} texts/s here: the fastest was chosen",
                       err=True)
    if not dry_run:
        engine.index.save_calibration(record)
        typer.echo(f"\nsaved with the index ({record['source']}): {record['settings']}")


def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run files.")],
    out: Annotated[Path, typer.Option(help=(
        "File to write: .html for the console's run views in one self-contained page "
        "(two runs: side by side); .png (or any image matplotlib writes) for recall@K curves "
        "and metric bars."))
    ] = Path("eval/report.png"),
) -> None:
    """Runs side by side: a self-contained HTML page, or a PNG of curves and bars."""
    from eval.run import load_run

    loaded = [(p.stem, load_run(p)) for p in runs]
    if out.suffix.lower() in (".html", ".htm"):
        from eval.html_report import write_html_report

        typer.echo(str(write_html_report(loaded, out)))
        return
    from eval.report import plot_runs

    typer.echo(str(plot_runs(loaded, out)))


def format_metrics(run: dict) -> str:
    """The metrics table printed after a run."""
    lines = [f"{run['dataset']['name']}  n={run['dataset']['n']}  mode={run['mode']}  "
             f"aggregation={run['retrieval']['aggregation']}  top_k={run['retrieval']['top_k']}"]
    for name, value in run["metrics"].items():
        lines.append(f"  {name:<22}{value:>10.4f}" if isinstance(value, float)
                     else f"  {name:<22}{value:>10}")
    totals = run["totals"]
    lines.append(f"  tokens in/out {totals['prompt_tokens']}/{totals['completion_tokens']}  "
                 f"llm calls {totals['llm_calls']}  degraded {totals['degraded']}  "
                 f"errors {totals['errors']}  {totals['texts_per_s']} texts/s")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the eval harness's commands to the command tree."""
    app.command("eval")(eval_command)
    app.command()(compare)
    app.command()(calibrate)
    app.command()(report)
