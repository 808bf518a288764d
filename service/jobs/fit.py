"""`labelrank fit`: a catalog, with or without examples, becomes a tuned (when that wins),
prototype-aware, calibrated index; every choice is made on a dev set tuning never saw (see
fit_dev: a split of the examples, a --dev file, or pseudo-queries of labels held out).

The stages, each skipped on a rerun whose inputs did not change (state in DB/labelrank-fit/):
split, index with the base model, calibrate it, tune a copy of the model on the examples and
the catalog's own texts with what is left of the time budget, index and calibrate with the
tuned model, keep whichever wins on the dev set, save the winner's calibration (thresholds set
for the share of out-of-scope traffic the user expects).
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
from retrieval.calibration.splits import holdout
from retrieval.catalog import Catalog, SkippedRow, load_catalog, load_labelled
from retrieval.errors import IndexMismatchError
from retrieval.index import LabelIndex, SyncReport, chroma_client, drop_index, label_texts
from retrieval.tune.stored import StoredEmbedder
from retrieval.tune.train import PROVENANCE_FILE, TuneConfig, TuningError, tune_texts
from service.factory import build_index
from service.jobs.fit_dev import MIN_DEV_TEXTS, FitError, LabeledDev, PseudoDev
from service.jobs.indexing import index_catalog, train_head
from service.locking import writing
from service.settings import Settings

WORK_DIR = "labelrank-fit"
# The tuned model must beat the base one on the dev split by more than this (dev-set noise:
# a 0.2-point dev win on CLINC150 was a loss on held-out text).
TUNE_MARGIN = 0.005

Progress = Callable[[str], None]
Rows = list[tuple[str, tuple[str, ...]]]


# Less tuning time than this is not worth a second index: fit keeps the base model.
MIN_TUNE_S = 30.0
EMBED_SAMPLE = 64  # texts timed to estimate what embedding the whole catalog again costs
Dev = LabeledDev | PseudoDev
__all__ = ["FitConfig", "FitError", "FitReport", "fit", "none_share_for"]


@dataclass(frozen=True)
class FitConfig:
    """What fit may spend and what it aims at."""

    minutes: float = 20.0  # the whole run's budget: tuning gets what the other stages leave
    none_share: float | None = None  # expected out-of-scope share; None: the examples'
    dev_share: float = 0.2  # of each label's examples (or of the labels: see PseudoDev.of)
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
    dev: dict = field(default_factory=dict)  # what the dev set is (fit_dev's describe)
    pairs: dict[str, int] = field(default_factory=dict)  # tuning pairs per kind
    skipped_rows: list[str] = field(default_factory=list)
    none_share: float | None = None  # None: no out-of-scope dev text to weigh
    model: str = "base"
    why: str = ""
    base: dict = field(default_factory=dict)
    tuned: dict | None = None
    settings: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # --minutes, the tuning time it left after the stages before and an estimate of those
    # after, and that estimate.
    budget: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)  # what each index's head training did


def fit(settings: Settings, catalog_path: Path, example_paths: Sequence[Path],
        dev_path: Path | None = None, config: FitConfig = FitConfig(),
        progress: Progress = lambda _: None) -> FitReport:
    """Run every stage (see the module docstring); returns the report, also saved as JSON."""
    started = time.perf_counter()
    report = FitReport()
    work = settings.db / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    state = _State(work / "state.json")
    with _stage(report, "split", progress):
        catalog, train, dev = _inputs(catalog_path, example_paths, dev_path, config, report,
                                      settings.self_calibration_texts,
                                      settings.self_calibration_multi_share)
    run_key = _digest({"catalog": catalog.fingerprint(), "train": train, "dev": dev.rows,
                       "config": asdict(config), "embedder": settings.embedder,
                       "none_share": report.none_share})
    if state.get("done") == run_key and (work / "report.json").is_file():
        done = FitReport(**json.loads((work / "report.json").read_text()))
        done.reused, done.seconds = ["everything: the inputs are those of the last run"], {}
        return done
    trials = _Trials(settings, _with_examples(catalog, train), dev, config, report, progress)
    base, base_cal = trials.candidate("base", work / "base-db", settings.embedder)
    kept = base
    report.base = _figures(base_cal)
    tune_s = _tuning_time(report, config, time.perf_counter() - started, base,
                          trials.synced["base"], trials.indexed)
    model_dir = work / "model"
    tuning_key = _digest({"rows": train, "base": settings.embedder, "catalog":
                          catalog.fingerprint(), "held": sorted(dev.held_labels),
                          "tuning": [config.epochs, config.learning_rate, config.batch_size,
                                     config.max_pairs]})
    with _stage(report, "tune", progress):
        if state.get("tuned_for") == tuning_key and (model_dir / PROVENANCE_FILE).is_file():
            report.reused.append("tune")
        elif tune_s >= MIN_TUNE_S:
            try:
                _retune(base, catalog, train, dev.held_labels, model_dir, config, tune_s)
                state.set("tuned_for", tuning_key)
            except TuningError as exc:
                report.why = f"not tuned: {exc}"
    tuned = state.get("tuned_for") == tuning_key
    best = base_cal
    if tuned:
        report.pairs, report.seconds["tune: pair mining"], report.seconds["tune: training"] = (
            _tuning_figures(model_dir))
        tuned_index, tuned_cal = trials.candidate("tuned", work / "tuned-db", str(model_dir))
        report.tuned = _figures(tuned_cal)
        keep = tuned_cal.value > base_cal.value + TUNE_MARGIN
        best, kept = (tuned_cal, tuned_index) if keep else (base_cal, base)
        report.model = "tuned" if keep else "base"
        report.why = (f"dev {base_cal.metric}: base {base_cal.value:.4f}, tuned "
                      f"{tuned_cal.value:.4f}: the tuned model "
                      + ("wins" if keep else f"does not win by more than {TUNE_MARGIN}"))
    elif not report.why:
        report.why = (f"not tuned: {tune_s:.0f} s of the {config.minutes:g}-minute budget "
                      f"were left for it (at least {MIN_TUNE_S:.0f} s needed)")
    with _stage(report, "index (final)", progress):
        final = trials.final(str(model_dir) if report.model == "tuned" else settings.embedder,
                             kept)
    # With the catalog's hash, `labelrank index` keeps this choice until the catalog changes.
    dev_set = {**dev.describe(), "sha256": _digest(dev.rows),
               "catalog_hash": final.fingerprint()["catalog_hash"]}
    final.save_calibration(calibration_record(
        best, "labeled" if isinstance(dev, LabeledDev) else "self", dev_set))
    report.settings = best.settings()
    report.seconds["total"] = round(time.perf_counter() - started, 1)
    (work / "report.json").write_text(json.dumps(asdict(report), indent=1))
    state.set("done", run_key)
    return report


def _tuning_time(report: FitReport, config: FitConfig, spent: float, base: LabelIndex,
                 embedded: SyncReport, catalog: Catalog) -> float:
    """Seconds left for tuning: the budget less what was spent and an estimate of the stages
    after it: embedding every text with the tuned model (at the base index's pace, or, when
    it embedded little, timed on a sample here), calibrating as long as the base model took,
    the final index (its vectors are copied, not embedded)."""
    texts = [text for label in catalog.labels.values() for _, text in label_texts(label)]
    if embedded.vectors_added >= len(texts) // 10:
        embedding = (report.seconds.get("index (base)", 0.0) * embedded.vectors_total
                     / embedded.vectors_added)
    else:
        sample = texts[::max(1, len(texts) // EMBED_SAMPLE)][:EMBED_SAMPLE]
        started = time.perf_counter()
        base.embedder.embed(sample)
        # An index build embeds in a worker process, overlapped with Chroma's writes: about
        # twice as fast as this one batch in-process (BANKING77-OOS: 527 s against 1,211 s).
        embedding = (time.perf_counter() - started) / len(sample) * len(texts) / 2
    after = embedding + report.seconds.get("calibrate (base)", 0.0)
    left = max(0.0, config.minutes * 60 - spent - after)
    report.budget = {"minutes": config.minutes, "tune_s": round(left, 1),
                     "after_tuning_estimate_s": round(after, 1)}
    return left


def _inputs(catalog_path: Path, example_paths: Sequence[Path], dev_path: Path | None,
            config: FitConfig, report: FitReport, pseudo_size: int, multi_share: float
            ) -> tuple[Catalog, Rows, Dev]:
    """The catalog without its examples, the example rows to train on and the dev set; the
    report gets the counts, the skipped rows and the out-of-scope share to calibrate for."""
    catalog, rows = _without_examples(load_catalog(catalog_path))
    skipped: list[SkippedRow] = []
    rows += [row for path in example_paths for row in load_labelled(path, catalog, skipped)]
    if dev_path is not None:
        dev_rows = load_labelled(dev_path, catalog, skipped)
        if not dev_rows:
            raise FitError(f"{dev_path} has no labelled texts")
        train = [r for r in rows if r[1]]
        dev: Dev = LabeledDev.of(dev_rows, _share(dev_rows, dev_rows, config), "--dev file")
    else:
        train, dev_rows = _split(rows, config.dev_share)
        # A split holds every out-of-scope row, so the traffic's share is that of all rows.
        dev = (LabeledDev.of(dev_rows, _share(dev_rows, rows, config), "fit dev split")
               if len(dev_rows) >= MIN_DEV_TEXTS else None)
        if dev is None:
            train = [r for r in rows if r[1]]
            dev = PseudoDev.of(_with_examples(catalog, train), config.dev_share, pseudo_size,
                               config.none_share, multi_share=multi_share)
    report.skipped_rows = [str(s) for s in skipped]
    report.train_texts, report.dev_texts = len(train), len(dev.rows)
    report.dev = dev.describe()
    report.none_share = dev.share()
    return catalog, train, dev


@dataclass
class _Trials:
    """The indexes fit builds: one per candidate model in its work directory, then the final."""

    settings: Settings
    indexed: Catalog  # the catalog with the train examples
    dev: Dev
    config: FitConfig
    report: FitReport
    progress: Progress
    synced: dict[str, SyncReport] = field(default_factory=dict)  # what each index embedded

    def candidate(self, name: str, db: Path, embedder: str) -> tuple[LabelIndex, Calibration]:
        """Index with one model in the work directory (always embedded, never a server), then
        calibrate on the dev set."""
        with _stage(self.report, f"index ({name})", self.progress):
            where = self.settings.model_copy(update={"db": db, "chroma_host": None,
                                                     "embedder": embedder, "prototypes": True})
            self.synced[name], _ = index_catalog(where, self.indexed)
            index = build_index(where)
            _train_head(where, index, self.report)
        with _stage(self.report, f"calibrate ({name})", self.progress):
            return index, self.dev.calibrate(self.settings, index, self.config.min_texts_per_s)

    def final(self, embedder: str, source: LabelIndex) -> LabelIndex:
        """The user's index with the kept model, prototypes and a head on its embeddings; its
        vectors are those the kept model's candidate index (`source`) already holds."""
        settings = self.settings.model_copy(update={"embedder": embedder, "prototypes": True})
        stored = StoredEmbedder(source)
        with writing(settings, "index"):
            try:
                index = build_index(settings, stored)
            except IndexMismatchError:
                # DIR holds an index of another model (an earlier fit's winner, or `labelrank
                # index` before fit): its vectors cannot stay beside this one's.
                drop_index(chroma_client(settings.db, settings.chroma_host,
                                         settings.chroma_port), settings.collection)
                index = build_index(settings, stored)
            if not settings.max_examples_per_label:
                index.recover(shared=settings.chroma_host is not None)
                index.sync(self.indexed)
        if settings.max_examples_per_label:  # pivots are chosen as indexing goes: embed again
            index_catalog(settings, self.indexed)
        final = build_index(settings)
        _train_head(settings, final, self.report)
        return final


def _train_head(settings: Settings, index: LabelIndex, report: FitReport) -> None:
    """Train the index's head (or keep an up-to-date one), as `labelrank index` does."""
    with writing(settings, "index"):
        report.head.append(train_head(settings, index))


def _split(rows: Rows, share: float) -> tuple[Rows, Rows]:
    """(train, dev): a stratified share of the examples (dev may be empty)."""
    train_rows, dev_rows = holdout([labels for _, labels in rows], share,
                                   [text for text, _ in rows])
    return [rows[i] for i in train_rows], [rows[i] for i in dev_rows]


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


def _share(dev: Rows, traffic: Rows, config: FitConfig) -> float | None:
    """none_share_for; with no out-of-scope dev text, the share asked for (the dev set then
    gets out-of-scope texts of its own)."""
    found = none_share_for(dev, traffic, config.none_share)
    return config.none_share if found is None else found


def _with_examples(catalog: Catalog, rows: Rows) -> Catalog:
    examples: dict[str, list[str]] = {}
    for text, labels in rows:
        for label in labels:
            examples.setdefault(label, []).append(text)
    return catalog.with_examples(examples)


def _retune(base: LabelIndex, catalog: Catalog, train: Rows, held: frozenset[str],
            model_dir: Path, config: FitConfig, seconds: float) -> None:
    """Tune a copy of the base model on the train examples and on the catalog texts of every
    label not held out for dev, within `seconds`."""
    import shutil

    shutil.rmtree(model_dir, ignore_errors=True)
    texts_by_label: dict[str, list[str]] = {}
    for text, labels in train:
        for label in labels:
            texts_by_label.setdefault(label, []).append(text)
    assignable = [lid for lid, label in catalog.labels.items() if label.assignable]
    tune_texts(base, texts_by_label, model_dir, TuneConfig(
        epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate,
        max_pairs=config.max_pairs, max_seconds=seconds, pairs_for_budget=True),
        catalog_labels=assignable, hidden=held, source="fit")


def _tuning_figures(model_dir: Path) -> tuple[dict[str, int], float, float]:
    """(pairs per kind, mining seconds, training seconds) of the tuned model's run."""
    done = json.loads((model_dir / PROVENANCE_FILE).read_text())
    return done.get("kinds", {}), done.get("mining_s", 0.0), done.get("training_s", 0.0)


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
