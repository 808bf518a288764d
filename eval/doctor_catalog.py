"""`labelrank doctor catalog`: print catalog problems and write a map of the labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli.common import DbOpt, settings_from


def doctor_catalog(
    db: DbOpt = None,
    run: Annotated[Path | None, typer.Option(
        help="An eval run file: its most confused label pairs are drawn on the map.")] = None,
    map_png: Annotated[Path, typer.Option("--map", help="PNG map of label centroids.")]
    = Path("catalog-map.png"),
    top: Annotated[int, typer.Option(min=1, help="Rows per section.")] = 20,
    per_label: Annotated[int, typer.Option(
        min=1, help="Example texts probed per label (caps the time on big catalogs).")] = 20,
    collisions: Annotated[int, typer.Option(min=0, help="Colliding texts shown per pair.")] = 2,
) -> None:
    """Overlapping labels, bare labels, names that miss, and a PNG map of label centroids."""
    from eval.catalog_map import confused_pairs, plot_map
    from eval.run import load_run
    from retrieval.diagnose import diagnose
    from service.factory import build_index

    index = build_index(settings_from(db))
    found = diagnose(index, top=top, per_label=per_label)
    name = {lid: lab.name for lid, lab in index.labels.items()}
    typer.echo(f"{found.labels} labels, {found.vectors} vectors\n")
    typer.echo("Most overlapping labels (share of probed texts whose nearest neighbour is in "
               "the other label; centroid similarity):")
    for ov in found.overlaps:
        typer.echo(f"  {ov.score:.2f}  {ov.centroid_similarity:.2f}  {ov.a} {name[ov.a]!r} "
                   f"<-> {ov.b} {name[ov.b]!r}")
        for col in ov.collisions[:collisions]:
            typer.echo(f"        {col.text!r} ({col.label_id}) ~ {col.other_text!r} "
                       f"({col.other_id}) {col.similarity:.2f}")
    typer.echo(f"\nLabels with no examples and no description ({len(found.bare)}):")
    for lid in found.bare[:top]:
        typer.echo(f"  {lid} {name[lid]!r}")
    typer.echo(f"\nLabels whose own name retrieves other labels first ({len(found.name_misses)}"
               " shown):")
    for miss in found.name_misses:
        where = f"own label at {miss.own_rank}" if miss.own_rank else "own label not in reach"
        ahead = ", ".join(f"{lid} {name.get(lid, lid)!r}" for lid in miss.ahead)
        typer.echo(f"  {miss.label_id} {name[miss.label_id]!r}: {ahead} ({where})")
    confused = confused_pairs(load_run(run), top) if run else []
    if confused:
        typer.echo("\nMost confused pairs in the run (gold -> predicted, texts):")
        for gold, wrong, n in confused:
            typer.echo(f"  {n:>4}  {gold} {name.get(gold, gold)!r} -> {wrong} "
                       f"{name.get(wrong, wrong)!r}")
    path = plot_map(found.centroids, name, map_png,
                    overlapping=[(ov.a, ov.b) for ov in found.overlaps[:10]], confused=confused)
    typer.echo(f"\nmap written to {path}")


def register(doctor: typer.Typer) -> None:
    """Add `catalog` to the `doctor` group."""
    doctor.command("catalog")(doctor_catalog)
