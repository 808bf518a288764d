"""`labelrank fit` on a catalog with no examples (issue 24) against today's self-calibrated
default, on the report halves `b` of labelled files fit never reads.

Per dataset: (a) the catalog indexed alone (an existing `labelrank index` directory, copied, or
built here), self-calibrated with today's code; (b) `fit` on the catalog alone (its dev set:
pseudo-queries of labels held out of tuning). fit's base candidate starts from a copy of the
same index, so only the tuned model's vectors are embedded. RP@5, RP@10, candidate recall@K and
texts/s, on half b (and half a, printed). Test splits are never read.

    .venv/bin/python -m bench.fit_catalog --datasets esco --minutes 12 --root /tmp/fitcat \\
        --json /tmp/fitcat/esco.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.late_interaction import measure
from eval.datasets import load_dataset
from retrieval.catalog import load_catalog
from service.factory import build_index, build_stages, effective_settings
from service.jobs.fit import WORK_DIR, FitConfig, fit
from service.jobs.indexing import index_catalog
from service.jobs.self_calibration import self_calibrate
from service.settings import Settings

DATA = Path("/work/shared/datasets")


@dataclass(frozen=True)
class Spec:
    """A catalog, an existing index of it alone (or None), its labelled files, the shortlist."""

    catalog: Path
    base_db: Path | None
    splits: tuple[tuple[str, Path], ...]
    top_k: int
    sample: int | None = None  # texts per half (a stable sample), for large splits


SPECS = {
    "esco": Spec(DATA / "esco/catalog.jsonl", Path("/tmp/esco-db"),
                 (("tech", DATA / "esco/tech_valid.jsonl"),
                  ("house", DATA / "esco/house_valid.jsonl")), 50),
    "clinc150": Spec(DATA / "clinc150/catalog.jsonl", None,
                     (("valid", DATA / "clinc150/valid.jsonl"),), 30, sample=300),
    "hwu64": Spec(DATA / "hwu64/catalog.jsonl", None,
                  (("valid", DATA / "hwu64/valid.jsonl"),), 30, sample=300),
}


def catalog_alone(spec: Spec, root: Path, others: int | None) -> Path:
    """The catalog file without examples (the shared file when it has none and every label is
    kept); with `others`, only the labelled files' labels and that many more."""
    rows = [json.loads(line) for line in spec.catalog.read_text().splitlines() if line.strip()]
    if others is not None:
        gold = {label for _, path in spec.splits for line in path.read_text().splitlines()
                if line.strip() for label in json.loads(line)["labels"]}
        rest = sorted(row["id"] for row in rows if row["id"] not in gold)
        kept = gold | set(random.Random(0).sample(rest, min(others, len(rest))))
        kept |= {row["parent"] for row in rows if row["id"] in kept and row.get("parent")}
        rows = [row for row in rows if row["id"] in kept]
    elif not any(row.get("examples") for row in rows):
        return spec.catalog
    out = root / "catalog-alone.jsonl"
    out.write_text("".join(json.dumps({**row, "examples": []}) + "\n" for row in rows))
    return out


def settings_at(db: Path) -> Settings:
    """Settings isolated from any .env, on this directory."""
    return Settings(_env_file=None, db=db, llm_base_url=None, llm_api_key=None)


def base_index(spec: Spec, catalog: Path, root: Path) -> Path:
    """A directory holding the catalog indexed alone (copied from spec.base_db when given)."""
    db = root / "base-db"
    if not (db / "chroma.sqlite3").is_file():
        if spec.base_db is not None:
            shutil.copytree(spec.base_db, db, ignore=shutil.ignore_patterns("*.lock"))
        # On a copy, only prunes the labels left out (nothing to embed).
        index_catalog(settings_at(db), load_catalog(catalog))
    return db


def scores(db: Path, spec: Spec) -> dict[str, dict]:
    """Every split's half a and b figures for the index at `db` with its saved calibration."""
    settings = settings_at(db)
    index = build_index(settings)
    effective = effective_settings(settings, index)
    out = {}
    for split, path in spec.splits:
        for half in ("a", "b"):
            data = load_dataset(path, half=half, sample=spec.sample)
            out[f"{split}_{half}"] = {"n": len(data.examples), **measure(
                index, effective, build_stages(effective), data, spec.top_k)}
    return out


def dev_file(spec: Spec, root: Path, half: str | None) -> Path | None:
    """That half of the first labelled file, written as a --dev file (None: no half)."""
    if half is None:
        return None
    data = load_dataset(spec.splits[0][1], half=half)
    out = root / f"dev-{half}.jsonl"
    out.write_text("".join(json.dumps({"text": e.text, "labels": list(e.labels)}) + "\n"
                           for e in data.examples))
    return out


def run(name: str, root: Path, minutes: float, others: int | None,
        dev_half: str | None = None) -> dict:
    """Rows (a) and (b) of one dataset."""
    spec = SPECS[name]
    root = root / name
    root.mkdir(parents=True, exist_ok=True)
    catalog = catalog_alone(spec, root, others)
    base = base_index(spec, catalog, root)
    default = root / "default-db"
    if not default.exists():
        shutil.copytree(base, default)
        found = self_calibrate(settings_at(default), build_index(settings_at(default)))
        build_index(settings_at(default)).save_calibration(found.record)
    result: dict = {"labels": len(load_catalog(catalog)), "default": scores(default, spec)}
    print(json.dumps({"dataset": name, "row": "default", **result["default"]}), flush=True)
    fitted = root / "fit-db"
    seeded = fitted / WORK_DIR / "base-db"
    if not seeded.exists():
        shutil.copytree(base, seeded)
    started = time.perf_counter()
    report = fit(settings_at(fitted), catalog, [], dev_file(spec, root, dev_half),
                 FitConfig(minutes=minutes),
                 progress=lambda stage: print(f"  {name}: {stage}", file=sys.stderr, flush=True))
    result["fit"] = {"report": asdict(report), "wall_s": round(time.perf_counter() - started),
                     **scores(fitted, spec)}
    print(json.dumps({"dataset": name, "row": "fit", **result["fit"]}), flush=True)
    return result


def main() -> None:
    """Run the chosen datasets and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["esco"], choices=list(SPECS))
    parser.add_argument("--minutes", type=float, default=20.0, help="fit's whole budget")
    parser.add_argument("--root", type=Path, default=Path("/tmp/fitcat"))
    parser.add_argument("--labels", type=int, help="keep the labelled files' labels and this "
                        "many others (a shorter run; see the module docstring)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--dev-half", choices=["a"], help="fit chooses on this half of the "
                        "first labelled file (the figures stay on half b)")
    args = parser.parse_args()
    figures = {name: run(name, args.root, args.minutes, args.labels, args.dev_half)
               for name in args.datasets}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
