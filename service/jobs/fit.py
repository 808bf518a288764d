"""`labelrank fit`: a catalog with examples becomes a tuned (when that wins), prototype-aware,
calibrated index; every choice is made on a dev split the index never holds.

The stages, each skipped on a rerun whose inputs did not change (state in DB/labelrank-fit/):
split, index with the base model, calibrate it, tune a copy of the model within the time budget,
index and calibrate with the tuned model, keep whichever wins on the dev split, save the winner's
calibration (thresholds set for the share of out-of-scope traffic the user expects).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from retrieval.calibration.scoring import Calibration, calibration_record
from retrieval.calibration.search import search_settings
from retrieval.calibration.splits import holdout
from retrieval.catalog import Catalog, SkippedRow, load_catalog, load_labelled
from retrieval.errors import LabelrankError
from retrieval.index import LabelIndex, chroma_client, drop_index
from retrieval.tune.train import PROVENANCE_FILE, TuneConfig, tune
from service.factory import build_index, search_space
from service.jobs.indexing import index_catalog, train_head
from service.locking import writing
from service.settings import Settings

WORK_DIR = "labelrank-fit"
# The tuned model must beat the base one on the dev split by more than this (dev-set noise:
# a 0.2-point dev win on CLINC150 was a loss on held-out text).
TUNE_MARGIN = 0.005

Progress = Callable[[str], None]
Rows = list[tuple[str, tuple[str, ...]]]


class FitError(LabelrankError):
    """Raised when fit cannot start: no examples, or no dev texts to choose anything on."""

    code = "fit_refused"
    status = 422


@dataclass(frozen=True)
class FitConfig:
    """What fit may spend and what it aims at."""

    minutes: float = 20.0  # the tuning budget
    none_share: float | None = None  # expected out-of-scope share; None: the examples'
    dev_share: float = 0.2  # of each label's examples, when no dev file is given
    max_pairs: int | None = None
    min_texts_per_s: float = 0.0
    epochs: int = 1
    learning_rate: float = 5e-5
    batch_size: int = 32


@dataclass
class FitReport:
    """What fit did: time per stage, the model kept and why, settings and dev figures."""

    train_texts: int = 0
    dev_texts: int = 0
    skipped_rows: list[str] = field(default_factory=list)
    none_share: float | None = None  # None: no out-of-scope dev text to weigh
    model: str = "base"
    why: str = ""
    base: dict = field(default_factory=dict)
    tuned: dict | None = None
    settings: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)  # what each index's head training did


def fit(settings: Settings, catalog_path: Path, example_paths: Sequence[Path],
        dev_path: Path | None = None, config: FitConfig = FitConfig(),
        progress: Progress = lambda _: None) -> FitReport:
    """Run every stage (see the module docstring); returns the report, also saved as JSON."""
    report = FitReport()
    work = settings.db / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    state = _State(work / "state.json")
    with _stage(report, "split", progress):
        catalog, train, dev = _inputs(catalog_path, example_paths, dev_path, config, report)
    run_key = _digest({"catalog": catalog.fingerprint(), "train": train, "dev": dev,
                       "config": asdict(config), "embedder": settings.embedder,
                       "none_share": report.none_share})
    if state.get("done") == run_key and (work / "report.json").is_file():
        done = FitReport(**json.loads((work / "report.json").read_text()))
        done.reused, done.seconds = ["everything: the inputs are those of the last run"], {}
        return done
    trials = _Trials(settings, _with_examples(catalog, train), dev, config, report, progress)
    base, base_cal = trials.candidate("base", work / "base-db", settings.embedder)
    report.base = _figures(base_cal)
    model_dir = work / "model"
    examples_key = _digest({"rows": train, "base": settings.embedder,
                            "tuning": [config.epochs, config.learning_rate, config.batch_size,
                                       config.max_pairs]})
    with _stage(report, "tune", progress):
        if state.get("tuned_for") == examples_key and (model_dir / PROVENANCE_FILE).is_file():
            report.reused.append("tune")
        else:
            _retune(base, train, work, model_dir, config)
            state.set("tuned_for", examples_key)
    _, tuned_cal = trials.candidate("tuned", work / "tuned-db", str(model_dir))
    report.tuned = _figures(tuned_cal)
    keep = tuned_cal.value > base_cal.value + TUNE_MARGIN
    report.model = "tuned" if keep else "base"
    report.why = (f"dev {base_cal.metric}: base {base_cal.value:.4f}, tuned "
                  f"{tuned_cal.value:.4f}: the tuned model "
                  + ("wins" if keep else f"does not win by more than {TUNE_MARGIN}"))
    best = tuned_cal if keep else base_cal
    with _stage(report, "index (final)", progress):
        final = trials.final(str(model_dir) if keep else settings.embedder, state)
    dev_set = {"name": "fit dev split", "n": len(dev), "sha256": _digest(dev),
               "none_share": report.none_share}
    final.save_calibration(calibration_record(best, "labeled", dev_set))
    report.settings = best.settings()
    (work / "report.json").write_text(json.dumps(asdict(report), indent=1))
    state.set("done", run_key)
    return report


def _inputs(catalog_path: Path, example_paths: Sequence[Path], dev_path: Path | None,
            config: FitConfig, report: FitReport) -> tuple[Catalog, Rows, Rows]:
    """The catalog without its examples, and every example row split into (train, dev); the
    report gets the counts, the skipped rows and the out-of-scope share to calibrate for."""
    catalog, rows = _without_examples(load_catalog(catalog_path))
    skipped: list[SkippedRow] = []
    rows += [row for path in example_paths for row in load_labelled(path, catalog, skipped)]
    report.skipped_rows = [str(s) for s in skipped]
    train, dev = _split(rows, catalog, dev_path, config.dev_share, skipped)
    report.train_texts, report.dev_texts = len(train), len(dev)
    # A dev file is the user's sample of traffic; a split holds every out-of-scope row, so
    # the traffic's share is that of all the examples.
    traffic = dev if dev_path is not None else rows
    report.none_share = none_share_for(dev, traffic, config.none_share)
    return catalog, train, dev


@dataclass
class _Trials:
    """The indexes fit builds: one per candidate model in its work directory, then the final."""

    settings: Settings
    indexed: Catalog  # the catalog with the train examples
    dev: Rows
    config: FitConfig
    report: FitReport
    progress: Progress

    def candidate(self, name: str, db: Path, embedder: str) -> tuple[LabelIndex, Calibration]:
        """Index with one model in the work directory (always embedded, never a server), then
        calibrate on the dev split."""
        with _stage(self.report, f"index ({name})", self.progress):
            where = self.settings.model_copy(update={"db": db, "chroma_host": None,
                                                     "embedder": embedder, "prototypes": True})
            index_catalog(where, self.indexed)
            index = build_index(where)
            _train_head(where, index, self.report)
        with _stage(self.report, f"calibrate ({name})", self.progress):
            return index, _calibrate(self.settings, index, self.dev, self.report.none_share,
                                     self.config)

    def final(self, embedder: str, state: _State) -> LabelIndex:
        """The user's index with the kept model, prototypes and a head on its embeddings."""
        settings = self.settings.model_copy(update={"embedder": embedder, "prototypes": True})
        if state.get("final_embedder") not in (None, embedder):
            # Another model won last time: its vectors cannot stay beside this one's.
            drop_index(chroma_client(settings.db, settings.chroma_host, settings.chroma_port),
                       settings.collection)
        index_catalog(settings, self.indexed)
        state.set("final_embedder", embedder)
        final = build_index(settings)
        _train_head(settings, final, self.report)
        return final


def _train_head(settings: Settings, index: LabelIndex, report: FitReport) -> None:
    """Train the index's head (or keep an up-to-date one), as `labelrank index` does."""
    with writing(settings, "index"):
        report.head.append(train_head(settings, index))


def _split(rows: Rows, catalog: Catalog, dev_path: Path | None, share: float,
           skipped: list[SkippedRow]) -> tuple[Rows, Rows]:
    """(train, dev): the given dev file, or a stratified share of the examples."""
    if dev_path is not None:
        dev = load_labelled(dev_path, catalog, skipped)
        return [r for r in rows if r[1]], dev
    train_rows, dev_rows = holdout([labels for _, labels in rows], share,
                                   [text for text, _ in rows])
    train, dev = [rows[i] for i in train_rows], [rows[i] for i in dev_rows]
    if not train:
        raise FitError("no example texts: fit needs labelled examples (in the catalog's lines "
                       "or --examples FILE)")
    if not dev:
        raise FitError("no dev texts: every label has a single example; give --dev FILE")
    return train, dev


def _without_examples(catalog: Catalog) -> tuple[Catalog, Rows]:
    """The catalog without the examples written in its lines, and those as labelled rows: they
    are split like the rows of an examples file."""
    rows: Rows = [(text, (label.id,)) for label in catalog.labels.values()
                  for text in label.examples]
    return Catalog({lid: replace(label, examples=()) for lid, label in catalog.labels.items()}
                   ), rows


def none_share_for(dev: Rows, traffic: Rows, asked: float | None) -> float | None:
    """The out-of-scope share to calibrate for: asked, else the share in `traffic` (the dev
    file, or all the examples when dev is split off them); None when the dev texts hold no
    out-of-scope text to weigh."""
    if not any(not labels for _, labels in dev):
        return None
    return asked if asked is not None else sum(not labels for _, labels in traffic) / len(traffic)


def _with_examples(catalog: Catalog, rows: Rows) -> Catalog:
    examples: dict[str, list[str]] = {}
    for text, labels in rows:
        for label in labels:
            examples.setdefault(label, []).append(text)
    return catalog.with_examples(examples)


def _calibrate(settings: Settings, index: LabelIndex, dev: Rows, none_share: float | None,
               config: FitConfig) -> Calibration:
    texts, gold = [t for t, _ in dev], [list(labels) for _, labels in dev]
    metric = "f1_samples" if any(len(g) > 1 for g in gold) else "accuracy"
    best, _ = search_settings(index, texts, gold, settings.top_k, metric,
                              search_space(settings),
                              config.min_texts_per_s, none_share=none_share)
    return best


def _retune(base: LabelIndex, train: Rows, work: Path, model_dir: Path,
            config: FitConfig) -> None:
    import shutil

    shutil.rmtree(model_dir, ignore_errors=True)
    examples = work / "train.jsonl"
    examples.write_text("".join(json.dumps({"text": t, "labels": list(labels)}) + "\n"
                                for t, labels in train))
    tune(base, examples, model_dir, TuneConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_pairs=config.max_pairs, max_seconds=config.minutes * 60))


def _figures(cal: Calibration) -> dict:
    return {"metric": cal.metric, "value": round(cal.value, 4),
            "candidate_recall": round(cal.candidate_recall, 4), "setting": cal.describe()}


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _stage(report: FitReport, name: str, progress: Progress) -> Iterator[None]:
    """Say that a stage starts; time it into the report."""
    progress(f"{name} ...")
    started = time.perf_counter()
    yield
    report.seconds[name] = round(time.perf_counter() - started, 1)


class _State:
    """A tiny JSON file of what earlier runs finished, so a rerun skips it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> object:
        """A recorded value, or None."""
        return self.data.get(key)

    def set(self, key: str, value: object) -> None:
        """Record a value, on disk at once."""
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1))
