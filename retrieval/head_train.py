"""Training the learned head: each example against its own labels, the labels retrieval would
shortlist beside them (hard negatives) and a few random ones; never a softmax over every label
(30,000 labels x 384 dims x 600,000 examples does not fit two cores)."""

from __future__ import annotations

import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from retrieval.calibration import work as work_meter
from retrieval.head import HeadInfo, HeadRow, Mode, examples_digest
from retrieval.index import LabelIndex

if TYPE_CHECKING:
    from torch import Tensor

_CHUNK = 1024  # rows per similarity block: 1,024 x 30,000 floats is 123 MB
# `max_seconds` counts work, not wall time, so that the same examples give the same head on any
# machine and under any load (a wall-clock cap ends a 30,000-label head wherever the clock
# stops it: another head each run). Each part at what it took on the reference machine (2
# cores, one torch thread; 384 dims, 21 candidates an example; docs/performance.md, "The
# head's budget"): a step 6 ms, plus 10 us a row it touches, plus 0.7 us a label of the
# catalog (1,000 labels 17.6 ms, 3,000 29.6-31.9, 30,000 64-74); the label neighbours 11 ns a
# pair of prototypes (30,000 labels 9.7 s); the prototypes, hard negatives and bias 17 us an
# example (600,000: 10 s). A machine over `work.WALL_FACTOR` times slower is stopped by the
# clock instead (the only stop that depends on the machine).
STEP_S, TOUCHED_ROW_S, LABEL_S = 6e-3, 10e-6, 0.7e-6
PROTOTYPE_PAIR_S, EXAMPLE_S = 11e-9, 17e-6
_SCALE_SAMPLE = 2000  # examples whose candidates fit the untrained labels' map
_SCALE_SEGMENT = 50  # of a label's examples, the ones its leave-one-out similarity looks at


@dataclass(frozen=True)
class TrainConfig:
    """What training may spend and how it samples; the same config and data give the same head
    on any machine (`max_seconds` is counted work, see STEP_S), unless the wall clock stops a
    machine over `work.WALL_FACTOR` times slower than the reference one."""

    # Settings' "Learned head" fields hold these defaults (service.jobs.indexing.head_config).
    mode: Mode
    epochs: int
    max_seconds: float
    hard_negatives: int
    random_negatives: int
    # At least this many optimizer steps, in whole passes: 10 passes over NLU++'s 1,601
    # examples are 60 steps, and the head stopped 4 f1 under a converged logistic regression.
    min_steps: int = 0
    label_neighbours: int = 50  # prototypes near a label's: where its examples' hard negatives are
    batch_size: int = 256
    learning_rate: float = 0.02
    # L2 on the touched rows, per pair: 1e-4 weighed like C ~ 0.02 in scikit-learn terms on
    # CLINC150 and cost NLU++ (pure head, f1_samples) 75.7 -> 61.1; the epoch bound and the
    # prototype start regularise enough.
    l2: float = 0.0
    init_scale: float = 10.0
    seed: int = 0


@dataclass(frozen=True)
class Fitted:
    """Weights [labels x dim] and biases in label-number order, the map for untrained labels."""

    weights: np.ndarray
    biases: np.ndarray
    scale: tuple[float, float]
    epochs: int
    seconds: float
    work_s: float = 0.0  # reference seconds counted against `max_seconds` (training ends there)


def fit_head(vectors: np.ndarray, label_sets: Sequence[Sequence[int]], n_labels: int,
             config: TrainConfig) -> Fitted:
    """Fit one weight and bias per label number on unit `vectors`, each with its label numbers
    (several for a multi-label text)."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    positives = _padded(label_sets)
    prototypes = _prototypes(x, positives, n_labels)
    hard = _hard_negatives(x, positives, prototypes, config)
    params = _LazyAdam(prototypes * config.init_scale,
                       _initial_bias(x, positives, hard, prototypes, config), config)
    threads = torch.get_num_threads()
    # Batches are small products: a second thread only waits on the first, and on a loaded
    # 2-core machine it cost 3x (1,000 labels, one epoch: 17 s on 1 thread, 48 s on 2).
    torch.set_num_threads(1)
    try:
        before = n_labels ** 2 * PROTOTYPE_PAIR_S + len(x) * EXAMPLE_S
        epochs, work = _epochs(params, x, positives, hard, n_labels, rng, config, started,
                               before)
    finally:
        torch.set_num_threads(threads)
    weights, biases = params.weights.numpy(), params.biases.numpy()
    scale = _similarity_map(x, positives, hard, weights, biases, rng)
    return Fitted(weights, biases, scale, epochs, time.perf_counter() - started, work)


class _LazyAdam:
    """Adam on the rows a batch touched only (as TensorFlow's LazyAdam): a dense step over
    30,000 x 384 weights per batch would cost more than the batch; torch's SparseAdam with
    sparse embeddings spent 17 of 61 s of a 1,000-label epoch in its sparse-tensor ops."""

    def __init__(self, weights: np.ndarray, bias: float, config: TrainConfig) -> None:
        import torch

        self.weights = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
        self.biases = torch.full((len(weights),), bias, dtype=torch.float32)
        self.moments = [torch.zeros_like(self.weights), torch.zeros_like(self.weights),
                        torch.zeros_like(self.biases), torch.zeros_like(self.biases)]
        # Steps per row: with the global count, a row first touched late took a step 3x Adam's
        # (its moments unwarmed, their correction gone), and one partial pass over 30,000
        # labels left the head below its prototype start (first examples right: 100% -> 82%).
        self.steps = torch.zeros(len(weights), dtype=torch.float32)
        self.lr = config.learning_rate

    def step(self, touched: Tensor, grad_w: Tensor, grad_b: Tensor) -> None:
        """One Adam step on the touched rows from their gradients."""
        import torch

        beta1, beta2, eps = 0.9, 0.999, 1e-8
        with torch.no_grad():
            self.steps[touched] += 1
            t = self.steps[touched]
            correction = (1 - beta2 ** t).sqrt() / (1 - beta1 ** t)
            for value, grad, m, v, rate in (
                    (self.weights, grad_w, *self.moments[:2], correction[:, None]),
                    (self.biases, grad_b, *self.moments[2:], correction)):
                m_rows = m[touched].mul_(beta1).add_(grad, alpha=1 - beta1)
                v_rows = v[touched].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m[touched], v[touched] = m_rows, v_rows
                value[touched] -= self.lr * rate * m_rows / (v_rows.sqrt() + eps)


def _epochs(params: _LazyAdam, x: np.ndarray, positives: np.ndarray, hard: np.ndarray,
            n_labels: int, rng: np.random.Generator, config: TrainConfig,
            started: float, work: float) -> tuple[int, float]:
    """Train for `config.epochs` passes, more when they make fewer than `config.min_steps`
    steps, until `work` (counted from the work done before) reaches `config.max_seconds`;
    returns the passes begun and the work."""
    import torch

    randoms = min(config.random_negatives, max(0, n_labels - 1))
    xt, post, hardt = torch.from_numpy(x), torch.from_numpy(positives), torch.from_numpy(hard)
    batches = max(1, len(x) // config.batch_size)
    passes = max(config.epochs, -(-config.min_steps // batches))
    epochs = 0
    while epochs < passes and not _spent(work, started, config):
        for batch in np.array_split(rng.permutation(len(x)), batches):
            rows = torch.from_numpy(batch)
            random = torch.from_numpy(rng.integers(0, n_labels, (len(batch), randoms)))
            pos = post[rows]
            candidates = torch.cat([pos.clamp(min=0), hardt[rows], random], dim=1)
            valid = torch.cat([pos >= 0, torch.ones_like(candidates[:, pos.shape[1]:],
                                                        dtype=torch.bool)], dim=1)
            target = (candidates[:, :, None] == pos[:, None, :]).any(-1) & valid
            touched, where = torch.unique(candidates, return_inverse=True)
            grad_w, grad_b = batch_gradients(xt[rows], params.weights[touched],
                                             params.biases[touched], where, target, valid,
                                             config)
            params.step(touched, grad_w, grad_b)
            work += STEP_S + len(touched) * TOUCHED_ROW_S + n_labels * LABEL_S
            if _spent(work, started, config):
                break
        epochs += 1
    return epochs, work


def _spent(work: float, started: float, config: TrainConfig) -> bool:
    """The budget of work is spent (or, on a far slower machine, the wall clock's)."""
    return (work >= config.max_seconds
            or time.perf_counter() - started > work_meter.WALL_FACTOR * config.max_seconds)


def batch_gradients(x: Tensor, w: Tensor, b: Tensor, where: Tensor, target: Tensor,
                    valid: Tensor, config: TrainConfig,
                    dense: bool | None = None) -> tuple[Tensor, Tensor]:
    """The loss's gradients on the touched rows `w`, `b` for a batch `x` whose candidates are
    rows `where` [n x k], written out: autograd's backward through the gathered rows took 36
    of 56 ms a step on the demo catalog, over half of all head training. `dense`: through
    every (text, touched row) pair, two matrix products; else through the n x k gathered rows
    only (default: dense while the touched rows are few, under 4 per text: 1.6 against 18.6
    ms a step at 240 rows, 39 against 14 at 5,000)."""
    import torch

    dense = len(w) <= 4 * len(x) if dense is None else dense
    if dense:
        logits = torch.addmm(b, x, w.T).gather(1, where)
    else:
        logits = torch.einsum("nd,nkd->nk", x, w[where]) + b[where]
    if config.mode == "ovr":
        grad = (torch.sigmoid(logits) - target.float()) * valid / valid.sum()
    else:
        share = target.float() / target.sum(dim=1, keepdim=True).clamp(min=1)
        probs = torch.softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
        grad = (probs * share.sum(dim=1, keepdim=True) - share) * valid / len(x)
    flat = where.reshape(-1)
    if dense:
        per_row = torch.zeros(len(x), len(w)).scatter_add_(1, where, grad)
        grad_w, grad_b = per_row.T @ x, per_row.sum(0)
    else:
        grad_w = torch.zeros_like(w).index_add_(0, flat, (grad[:, :, None] * x[:, None, :])
                                                .reshape(-1, w.shape[1]))
        grad_b = torch.zeros_like(b).index_add_(0, flat, grad.reshape(-1))
    if config.l2:
        # L2 on the rows this batch touched, as often as they appear in it.
        uses = torch.bincount(flat, minlength=len(w)).to(w.dtype)
        grad_w += (2 * config.l2 / len(x)) * uses[:, None] * w
    return grad_w, grad_b


def _padded(label_sets: Sequence[Sequence[int]]) -> np.ndarray:
    """[examples x most labels] label numbers, -1 padded."""
    width = max((len(s) for s in label_sets), default=1)
    out = np.full((len(label_sets), max(1, width)), -1, dtype=np.int64)
    for row, labels in enumerate(label_sets):
        out[row, :len(labels)] = labels
    return out


def _prototypes(x: np.ndarray, positives: np.ndarray, n_labels: int) -> np.ndarray:
    """Each label's normalised mean example."""
    import torch

    sums = torch.zeros((n_labels, x.shape[1]), dtype=torch.float32)
    xt = torch.from_numpy(x)
    for column in torch.from_numpy(positives).T:
        keep = column >= 0
        sums.index_add_(0, column[keep], xt[keep])
    sums /= sums.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return sums.numpy()


def _hard_negatives(x: np.ndarray, positives: np.ndarray, prototypes: np.ndarray,
                    config: TrainConfig) -> np.ndarray:
    """[examples x H] for each example, the labels whose prototypes are nearest it, picked
    among its own labels' nearest prototypes (two steps: every example against every
    prototype would cost 14 TFLOP at 30,000 labels and 600,000 examples)."""
    n_labels = len(prototypes)
    h = min(config.hard_negatives, n_labels - 1)
    if h <= 0:
        return np.zeros((len(x), 0), dtype=np.int64)
    m = min(max(config.label_neighbours, h + positives.shape[1]), n_labels - 1)
    neighbours = _nearest_prototypes(prototypes, m)
    out = np.empty((len(x), h), dtype=np.int64)
    # Examples with the same labels share one pool: its prototypes are gathered once per label
    # set, not once per example (per example, 30,000 labels x 5 examples moved 11.5 GB and
    # spent 100 of 160 s before the first training step).
    sets, group = np.unique(positives, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(sets) + 1))
    for number, pos in enumerate(sets):
        members = order[bounds[number]:bounds[number + 1]]
        own = pos[pos >= 0]
        pool = neighbours[own].reshape(-1)  # m >= h + labels: h usable ones always remain
        scores = x[members] @ prototypes[pool].T
        if len(own) > 1:
            # Several labels of one text share neighbours: each label once, or the nearest
            # fill every slot (NLU++, 2.3 labels a text, pure head: 57.5 -> 61.1 f1_samples
            # deduped); and a text's own labels are no negatives of it.
            usable = np.zeros(len(pool), dtype=bool)
            usable[np.unique(pool, return_index=True)[1]] = True
            scores[:, ~(usable & ~np.isin(pool, own))] = -np.inf
        out[members] = pool[np.argsort(-scores, axis=1, kind="stable")[:, :h]]
    return out


def _nearest_prototypes(prototypes: np.ndarray, m: int) -> np.ndarray:
    """[labels x m] each label's nearest other prototypes, nearest first."""
    import torch

    protos = torch.from_numpy(prototypes)
    neighbours = np.empty((len(prototypes), m), dtype=np.int64)
    for start in range(0, len(prototypes), _CHUNK):
        sims = protos[start:start + _CHUNK] @ protos.T
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -np.inf
        neighbours[start:start + _CHUNK] = sims.topk(m, dim=1).indices.numpy()
    return neighbours


def _initial_bias(x: np.ndarray, positives: np.ndarray, hard: np.ndarray,
                  prototypes: np.ndarray, config: TrainConfig) -> float:
    """A bias that starts the scaled prototype logits between positives and hard negatives."""
    first = positives[:, 0]
    to_own = np.einsum("nd,nd->n", x, prototypes[first])
    if not hard.shape[1]:
        return -config.init_scale * float(np.mean(to_own)) if config.mode == "ovr" else 0.0
    to_hard = np.einsum("nd,nd->n", x, prototypes[hard[:, 0]])
    middle = (float(np.mean(to_own)) + float(np.mean(to_hard))) / 2
    return -config.init_scale * middle if config.mode == "ovr" else 0.0


def _similarity_map(x: np.ndarray, positives: np.ndarray, hard: np.ndarray, w: np.ndarray,
                    b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(a, c) with logit ~ a x similarity + c over trained labels, where similarity is what
    retrieval gives an unseen text: its best cosine to the label's other examples."""
    members = np.full((len(w), _SCALE_SEGMENT), -1, dtype=np.int64)  # a label's first examples
    filled = np.zeros(len(w), dtype=np.int64)
    for row, labels in enumerate(positives.tolist()):
        for label in labels:
            if label >= 0 and filled[label] < _SCALE_SEGMENT:
                members[label, filled[label]] = row
                filled[label] += 1
    sample = np.sort(rng.choice(len(x), size=min(_SCALE_SAMPLE, len(x)), replace=False))
    sims, logits = [], []
    for start in range(0, len(sample), 64):
        rows = sample[start:start + 64]
        labels = np.concatenate([np.where(positives[rows] >= 0, positives[rows],
                                          positives[rows][:, :1]), hard[rows]], axis=1)
        others = members[labels]  # [rows x labels x segment]
        found = np.einsum("nd,nksd->nks", x[rows], x[np.maximum(others, 0)])
        found[(others < 0) | (others == rows[:, None, None])] = -np.inf
        best = found.max(axis=2)
        keep = np.isfinite(best)
        sims.append(best[keep])
        logits.append((np.einsum("nd,nkd->nk", x[rows], w[labels]) + b[labels])[keep])
    s, z = np.concatenate(sims), np.concatenate(logits)
    if len(s) < 2 or np.ptp(s) == 0:
        return 0.0, float(np.mean(z)) if len(z) else 0.0
    a, c = np.polyfit(s.astype(np.float64), z.astype(np.float64), 1)
    return float(a), float(c)


def train_index_head(index: LabelIndex, config: TrainConfig) -> HeadInfo | None:
    """Train on the example texts the index holds and save the head with it; None (nothing
    saved) when fewer than two assignable labels have examples."""
    fitted = fit_index_head(index, config)
    if fitted is None:
        return None
    index.save_head(*fitted)
    return fitted[0]


def fit_index_head(index: LabelIndex, config: TrainConfig,
                   skip: Container[str] = frozenset()
                   ) -> tuple[HeadInfo, dict[str, HeadRow]] | None:
    """A head trained on the example vectors the index holds, except the vector ids in `skip`
    (nothing saved); None when fewer than two assignable labels have examples."""
    started = time.perf_counter()
    row_of: dict[str, int] = {}  # a text several labels share is one multi-label example
    vectors: list[np.ndarray] = []
    labels_of: list[list[str]] = []
    by_label: dict[str, list[str]] = {}
    for stored in index.iter_vectors(kind="example"):
        label = index.labels.get(stored.label_id)
        if label is None or not label.assignable or stored.vector_id in skip:
            continue
        by_label.setdefault(stored.label_id, []).append(stored.text)
        row = row_of.setdefault(stored.text, len(row_of))
        if row == len(vectors):
            vectors.append(stored.vector)
            labels_of.append([])
        labels_of[row].append(stored.label_id)
    if len(by_label) < 2:
        return None
    number = {label_id: n for n, label_id in enumerate(sorted(by_label))}
    numbered = [sorted({number[lid] for lid in labels}) for labels in labels_of]
    fitted = fit_head(np.stack(vectors), numbered, len(number), config)
    rows = {lid: HeadRow(fitted.weights[n], float(fitted.biases[n]),
                         examples_digest(by_label[lid])) for lid, n in number.items()}
    info = HeadInfo(trained_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    embedder=index.embedder.name, dim=index.embedder.dim, mode=config.mode,
                    scale=fitted.scale, labels=len(rows), examples=len(vectors),
                    seconds=round(time.perf_counter() - started, 1), epochs=fitted.epochs)
    return info, rows
