"""Fine-tune the index's embedder on labelled texts: in-batch negatives plus hard negatives."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retrieval.calibration.held_out import HeldOutIndex
from retrieval.catalog import Catalog, load_examples
from retrieval.embedder import resolve_model_path
from retrieval.errors import LabelrankError, require_extra
from retrieval.index import LabelIndex, label_texts
from retrieval.tune.catalog_pairs import catalog_pairs, pair_kinds
from retrieval.tune.pairs import (
    Pair,
    Row,
    distinct_label_batches,
    label_texts_of,
    make_pairs,
    mine_rows,
)

Embed = Callable[[list[str]], np.ndarray]

PROVENANCE_FILE = "labelrank-tuning.json"
# A training pair costs about this many inference embeddings of one text (the trainer's own
# overhead included), measured on 2 shared cores: ~105 on the demo's short texts (0.95 s a pair,
# 9 ms a text), ~40 on ESCO's (2.3 s a pair). Between the two: an unused pair costs only its
# mining, an unmined one a step.
TRAIN_COST = 60
MIN_PAIRS = 64


class TuningError(LabelrankError):
    """Raised when tuning is refused: output not new and empty, a test split, no labelled texts."""

    code = "tuning_refused"
    status = 422


@dataclass(frozen=True)
class TuneConfig:
    """How to tune: passes, batch, learning rate, and how hard negatives are mined."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    max_pairs: int | None = None
    neighbours: int = 30  # index hits scanned per text for a hard negative
    duplicate_similarity: float = 0.9  # this close to the anchor or positive: not a negative
    seed: int = 13
    # Mining and training stop this long after tuning starts (a step never breaks).
    max_seconds: float | None = None
    # Mine only the pairs the time budget can train (estimated from the encoder's speed here):
    # mining a 13,897-label catalog's 60,000 pairs took longer than a 20-minute budget.
    pairs_for_budget: bool = False


@dataclass
class TuneReport:
    """What a tuning run did and how long each stage took."""

    out: str
    base_model: str
    examples: str
    pairs: int = 0
    label_pairs: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # pairs per kind (see pair_kinds)
    catalog_labels: int = 0  # labels whose catalog texts made pairs
    budget_pairs: int | None = None  # the pairs the time budget was estimated to afford
    mined_negatives: int = 0
    random_negatives: int = 0
    steps: int = 0
    planned_steps: int = 0  # more than `steps` when the time budget stopped training
    mining_s: float = 0.0
    training_s: float = 0.0
    dev_texts: int = 0
    dev_accuracy_before: float | None = None
    dev_accuracy_after: float | None = None
    config: dict = field(default_factory=dict)


def check_output(out: Path, index: LabelIndex) -> None:
    """Refuse to write over the model the index was built with, or into any non-empty
    directory: a model directory, once written, never changes, so the embedder path an index
    records keeps naming the weights that built it."""
    built_with = str(index.fingerprint().get("embedder") or index.embedder.name)
    try:
        index_model = resolve_model_path(built_with)
    except LabelrankError:
        index_model = None
    target = out.expanduser().resolve()
    if index_model is not None and target == index_model:
        raise TuningError(f"{out} holds the model this index was built with ({built_with}); "
                          "write the tuned model to a new directory", out=str(out))
    if target.exists() and not target.is_dir():
        raise TuningError(f"{out} exists and is not a directory", out=str(out))
    if target.is_dir() and any(target.iterdir()):
        raise TuningError(f"{out} is not empty; write the tuned model to a new directory",
                          out=str(out))


def labelled_texts(index: LabelIndex, path: Path) -> dict[str, list[str]]:
    """Texts per label id from a train or valid file of the index's labels."""
    if "test" in path.stem.lower():
        raise TuningError(f"{path} looks like a test split; tune on train or valid only",
                          path=str(path))
    texts_by_label = load_examples(path, Catalog(dict(index.labels)))
    if not texts_by_label:
        raise TuningError(f"{path} has no labelled texts", path=str(path))
    return texts_by_label


def gold_labels(texts_by_label: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    """Each text's set of labels (a text may carry several)."""
    gold: dict[str, set[str]] = {}
    for label_id, texts in texts_by_label.items():
        for text in texts:
            gold.setdefault(text, set()).add(label_id)
    return {text: frozenset(labels) for text, labels in gold.items()}


def training_rows(index: LabelIndex, texts_by_label: dict[str, list[str]],
                  config: TuneConfig, catalog_labels: Sequence[str] = (),
                  hidden: frozenset[str] = frozenset(),
                  max_pairs: int | None = None) -> list[Row]:
    """Pairs from the labelled texts and from the catalog texts of `catalog_labels`, each with
    a hard negative mined from the index; no text of a `hidden` label is an anchor, a
    positive or a negative."""
    rng = random.Random(config.seed)
    texts_by_label = {lid: texts for lid, texts in texts_by_label.items() if lid not in hidden}
    pairs = make_pairs(texts_by_label, index.labels, None, rng)
    gold = gold_labels(texts_by_label)
    if catalog_labels:
        more, more_gold = catalog_pairs(index.labels, [lid for lid in catalog_labels
                                                       if lid not in hidden], rng)
        pairs = _merged(pairs, more, rng)
        for text, owners in more_gold.items():
            gold[text] = gold.get(text, frozenset()) | owners
    limits = [n for n in (config.max_pairs, max_pairs) if n is not None]
    pairs = pairs[:min(limits)] if limits else pairs
    return mine_rows(pairs, gold, _without_labels(index, hidden), config.neighbours,
                     config.duplicate_similarity, rng)


def _merged(first: list[Pair], second: list[Pair], rng: random.Random) -> list[Pair]:
    """Both lists shuffled together, so that a cap on pairs takes some of each."""
    pairs = [*first, *second]
    rng.shuffle(pairs)
    return pairs


def _without_labels(index: LabelIndex, hidden: frozenset[str]) -> LabelIndex | HeldOutIndex:
    """The index, or a view of it where the hidden labels' texts are never found."""
    if not hidden:
        return index
    texts = [(lid, kind, text) for lid in sorted(hidden) if lid in index.labels
             for kind, text in label_texts(replace(index.labels[lid],
                                                   examples=tuple(index.examples(lid))))]
    return HeldOutIndex(index, texts, per_query=15)


def affordable_pairs(embed: Embed, sample: Sequence[str], seconds: float) -> int:
    """How many pairs mining and training can get through in `seconds`, from the time to
    embed a sample of the anchors: a pair costs one embedding to mine and about
    TRAIN_COST more to train (three texts, forward and backward)."""
    started = time.perf_counter()
    embed(list(sample))
    per_text = (time.perf_counter() - started) / max(len(sample), 1)
    return max(MIN_PAIRS, int(seconds / (per_text * (1 + TRAIN_COST))))


def nearest_label_accuracy(embed: Embed, references: dict[str, list[str]],
                           dev: dict[str, frozenset[str]]) -> float:
    """Share of dev texts whose nearest reference text (a label's name or description, or one
    of its training texts) belongs to one of their labels: max-similarity top-1."""
    ref_labels = [lid for lid, texts in references.items() for _ in texts]
    ref_vectors = embed([t for texts in references.values() for t in texts])
    dev_texts = list(dev)
    nearest = (embed(dev_texts) @ ref_vectors.T).argmax(axis=1)
    hits = sum(ref_labels[i] in dev[text] for text, i in zip(dev_texts, nearest, strict=True))
    return round(hits / len(dev_texts), 4)


def dev_references(index: LabelIndex, texts_by_label: dict[str, list[str]],
                   per_label: int = 20, seed: int = 13) -> dict[str, list[str]]:
    """Label texts plus a capped sample of training texts per label, for the dev check."""
    rng = random.Random(seed)
    return {lid: [*label_texts_of(index.labels[lid]),
                  *rng.sample(texts, min(per_label, len(texts)))]
            for lid, texts in texts_by_label.items()}


def tune(index: LabelIndex, examples: Path, out: Path, config: TuneConfig,
         dev: Path | None = None) -> TuneReport:
    """Tune a copy of the index's embedder on `examples` and save it to `out` (with a
    before/after nearest-label check on `dev` when given)."""
    texts_by_label = labelled_texts(index, examples)
    dev_gold = gold_labels(labelled_texts(index, dev)) if dev else None
    return tune_texts(index, texts_by_label, out, config, dev_gold=dev_gold,
                      source=str(examples))


def tune_texts(index: LabelIndex, texts_by_label: dict[str, list[str]], out: Path,
               config: TuneConfig, catalog_labels: Sequence[str] = (),
               hidden: frozenset[str] = frozenset(),
               dev_gold: dict[str, frozenset[str]] | None = None,
               source: str = "") -> TuneReport:
    """Tune a copy of the index's embedder on labelled texts and on the catalog texts of
    `catalog_labels` (see training_rows), within config.max_seconds from this call; save it to
    `out`."""
    started = time.perf_counter()
    for module in ("datasets", "accelerate"):  # the trainer's, checked before minutes of mining
        require_extra(module, "tune")
    check_output(out, index)
    report = TuneReport(out=str(out), base_model=index.embedder.name, examples=source,
                        config=asdict(config))
    references = dev_references(index, texts_by_label, seed=config.seed)
    if dev_gold:
        report.dev_texts = len(dev_gold)
        report.dev_accuracy_before = nearest_label_accuracy(index.embedder.embed, references,
                                                            dev_gold)
    deadline = started + config.max_seconds if config.max_seconds else None
    budget_pairs = None
    if deadline is not None and config.pairs_for_budget:
        sample = [t for texts in texts_by_label.values() for t in texts][:32] or [
            text for lid in list(catalog_labels)[:32] for text in label_texts_of(
                index.labels[lid])][:32]
        budget_pairs = affordable_pairs(index.embedder.embed, sample,
                                        deadline - time.perf_counter())
    report.budget_pairs = budget_pairs
    rows = training_rows(index, texts_by_label, config, catalog_labels, hidden, budget_pairs)
    if not rows:
        raise TuningError("no training pairs: no example, alias or description outside the "
                          "labels held out, and too few labels to compose texts of")
    report.mining_s = round(time.perf_counter() - started, 1)
    report.pairs = len(rows)
    report.label_pairs = sum(r.kind == "label" for r in rows)
    report.kinds = pair_kinds([r.kind for r in rows])
    report.catalog_labels = len({lid for lid in catalog_labels if lid not in hidden})
    report.mined_negatives = sum(r.mined for r in rows)
    report.random_negatives = report.pairs - report.mined_negatives
    training = time.perf_counter()
    model = _load_trainable(index.embedder.name)
    report.steps, report.planned_steps = _train(model, rows, config, deadline)
    report.training_s = round(time.perf_counter() - training, 1)
    if dev_gold:
        report.dev_accuracy_after = nearest_label_accuracy(
            partial(model.encode, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False), references, dev_gold)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    (out / PROVENANCE_FILE).write_text(json.dumps(asdict(report), indent=1))
    return report


def _load_trainable(model_name: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    # A fresh copy: the embedder the index uses stays untouched.
    return SentenceTransformer(str(resolve_model_path(model_name)), device="cpu")


def _train(model, rows: list[Row], config: TuneConfig,
           deadline: float | None) -> tuple[int, int]:
    """Run MultipleNegativesRankingLoss over (anchor, positive, negative); returns the steps
    taken and the steps planned."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    dataset = Dataset.from_dict({"anchor": [r.anchor for r in rows],
                                 "positive": [r.positive for r in rows],
                                 "negative": [r.negative for r in rows]})
    with tempfile.TemporaryDirectory(prefix="labelrank-tune-") as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
            warmup_steps=0.1, save_strategy="no", report_to="none", seed=config.seed,
            logging_steps=50, dataloader_pin_memory=False,
            batch_sampler=partial(DistinctLabelBatchSampler, rows=rows),
        )
        budget = [TimeBudget(deadline)] if deadline is not None else []
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model),
                                             callbacks=budget)
        trainer.train()
        return int(trainer.state.global_step), int(trainer.state.max_steps)


class TimeBudget(TrainerCallback):
    """Stops training at the first step end past the deadline (a time.perf_counter() value:
    the clock started with tuning, mining included)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        """Ask the trainer to stop once the budget is spent."""
        if time.perf_counter() >= self.deadline:
            control.should_training_stop = True


class DistinctLabelBatchSampler(DefaultBatchSampler):
    """Shuffled batches with no in-batch false negatives (see distinct_label_batches)."""

    def __init__(self, dataset, batch_size: int, drop_last: bool, rows: list[Row],
                 valid_label_columns=None, generator=None, seed: int = 0) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        self.rows = rows
        self._length = sum(1 for _ in self._batches())

    def _batches(self):
        order = list(range(len(self.rows)))
        random.Random(self.seed + self.epoch).shuffle(order)
        return distinct_label_batches(self.rows, order, self.batch_size)

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return self._length
