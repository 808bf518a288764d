"""Fine-tune the index's embedder on labelled texts: in-batch negatives plus hard negatives."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retrieval.catalog import Catalog, load_examples
from retrieval.embedder import resolve_model_path
from retrieval.errors import LabelrankError, require_extra
from retrieval.index import LabelIndex
from retrieval.tune.pairs import (
    Row,
    distinct_label_batches,
    label_texts_of,
    make_pairs,
    mine_rows,
)

Embed = Callable[[list[str]], np.ndarray]

PROVENANCE_FILE = "labelrank-tuning.json"


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
    max_seconds: float | None = None  # training stops after this long (a step never breaks)


@dataclass
class TuneReport:
    """What a tuning run did and how long each stage took."""

    out: str
    base_model: str
    examples: str
    pairs: int = 0
    label_pairs: int = 0
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
                  config: TuneConfig) -> list[Row]:
    """Pairs from the labelled texts, each with a hard negative mined from the index."""
    rng = random.Random(config.seed)
    pairs = make_pairs(texts_by_label, index.labels, config.max_pairs, rng)
    return mine_rows(pairs, gold_labels(texts_by_label), index, config.neighbours,
                     config.duplicate_similarity, rng)


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
    for module in ("datasets", "accelerate"):  # the trainer's, checked before minutes of mining
        require_extra(module, "tune")
    check_output(out, index)
    report = TuneReport(out=str(out), base_model=index.embedder.name, examples=str(examples),
                        config=asdict(config))
    texts_by_label = labelled_texts(index, examples)
    dev_gold = gold_labels(labelled_texts(index, dev)) if dev else None
    references = dev_references(index, texts_by_label, seed=config.seed)
    if dev_gold:
        report.dev_texts = len(dev_gold)
        report.dev_accuracy_before = nearest_label_accuracy(index.embedder.embed, references,
                                                            dev_gold)
    started = time.perf_counter()
    rows = training_rows(index, texts_by_label, config)
    report.mining_s = round(time.perf_counter() - started, 1)
    report.pairs = len(rows)
    report.label_pairs = sum(r.kind == "label" for r in rows)
    report.mined_negatives = sum(r.mined for r in rows)
    report.random_negatives = report.pairs - report.mined_negatives
    started = time.perf_counter()
    model = _load_trainable(index.embedder.name)
    report.steps, report.planned_steps = _train(model, rows, config)
    report.training_s = round(time.perf_counter() - started, 1)
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


def _train(model, rows: list[Row], config: TuneConfig) -> tuple[int, int]:
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
        budget = [TimeBudget(config.max_seconds)] if config.max_seconds else []
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model),
                                             callbacks=budget)
        trainer.train()
        return int(trainer.state.global_step), int(trainer.state.max_steps)


class TimeBudget(TrainerCallback):
    """Stops training at the first step end past the deadline (the clock starts at train)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = float("inf")

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: object) -> None:
        """Start the clock."""
        self.deadline = time.monotonic() + self.seconds

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        """Ask the trainer to stop once the budget is spent."""
        if time.monotonic() >= self.deadline:
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
