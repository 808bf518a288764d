"""The calibration search: every lever the retriever serves, each setting ranked by the serving
code (`Retriever.rank`) on one dev set, scored with its best threshold and timed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from retrieval.branches import BranchConfig, BranchStage
from retrieval.calibration.memo_index import MemoIndex
from retrieval.calibration.scoring import (
    METRICS,
    Calibration,
    ShortlistMatrix,
    beats_flat,
    best_threshold,
    candidate_recall,
)
from retrieval.fusion import Aggregation
from retrieval.lexical import LexicalStage
from retrieval.retriever import Retriever
from retrieval.stages import CandidateStage, Search
from retrieval.subqueries import SubqueryConfig, SubqueryStage
from retrieval.taxonomy import taxonomy_of

AGGREGATIONS = (Aggregation("max", 0, None),
                *(Aggregation("rrf", k, m) for k in (1.0, 10.0, 60.0) for m in (1, 3, 5, None)))


@dataclass(frozen=True)
class SearchSpace:
    """The levers calibration tries. Aggregation x depth is a full grid (cheap: one search);
    then, one lever at a time from the best so far: the lexical weight, sub-queries (n-grams
    x neighbours per part, then weight, then words per sentence part, then lexical on top),
    branch mode. A 0 in `subquery_ngrams` or `lexical_weights` means off."""

    aggregations: tuple[Aggregation, ...] = AGGREGATIONS
    depths: tuple[int, ...] = (50, 100, 200)
    lexical_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    subquery_ngrams: tuple[int, ...] = (0, 2, 3)
    subquery_neighbours: tuple[int, ...] = (20, 50)
    subquery_weights: tuple[float, ...] = (0.5, 0.3, 0.7)
    subquery_max_words: tuple[int, ...] = (40, 20)
    # Sub-queries cost 10-30 times a whole-text search: their settings are compared on a
    # stable sample of this many dev texts, against the best whole-text setting on the same.
    subquery_sample: int = 400
    branch_counts: tuple[int, ...] = (1, 2, 3, 5)
    max_branch_depth: int = 3
    per_branch: bool = True  # also try a relative threshold against the branch's top

    @classmethod
    def only(cls, aggregation: Aggregation, neighbours: int,
             subqueries: SubqueryConfig | None = None, lexical_weight: float = 0.0,
             per_branch: bool = True) -> SearchSpace:
        """One retrieval setting, flat: calibrate its threshold only."""
        sub = subqueries or SubqueryConfig()
        return cls((aggregation,), (neighbours,), (lexical_weight,),
                   (subqueries.max_ngram if subqueries else 0,), (sub.neighbours,),
                   (sub.weight,), (sub.max_words,), branch_counts=(), per_branch=per_branch)


def search_settings(index: Any, texts: Sequence[str], gold: Sequence[Sequence[str]],
                    top_k: int, metric: str, space: SearchSpace = SearchSpace(),
                    min_texts_per_s: float = 0.0,
                    subquery_texts: Sequence[int] | None = None,
                    none_share: float | None = None,
                    ) -> tuple[Calibration, list[Calibration]]:
    """The best setting in `space` on these texts, and every setting tried. `index` is a
    LabelIndex or a view of one (`HeldOutIndex`). Settings slower than `min_texts_per_s` are
    reported but not chosen (unless every whole-text setting is). Sub-queries are judged on
    the texts at `subquery_texts` (default: all); when they win there, the winner is ranked
    on all texts again for its threshold. With `none_share`, the metric weighs the
    out-of-scope dev texts as that share of all texts (see `text_weights`)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    if not texts:
        raise ValueError("calibration needs at least one dev text")
    memo = MemoIndex(index)
    taxonomy = taxonomy_of(index.labels)
    branch_depths = range(min(taxonomy.max_depth(), space.max_branch_depth)
                          if space.branch_counts else 0)
    widen = BranchConfig().widen if branch_depths else 1
    branch_of = ((lambda label_id: taxonomy.branch(label_id, 0))
                 if taxonomy.max_depth() > 0 else None)
    scopes = (False, True) if branch_of and space.per_branch else (False,)
    run = _Runner(memo, top_k, metric, branch_of, scopes, min_texts_per_s, none_share)

    depths = sorted({max(d, top_k) for d in space.depths})
    whole = run.search(texts, gold, depths[-1], widen)
    flat = [run.rank(whole.at(d), how, []) for d in depths for how in space.aggregations]
    best = run.pick(flat, floor=True)
    lexical = [run.rank(whole.at(best.neighbours), best.aggregation, [LexicalStage(w)])
               for w in space.lexical_weights if w]
    results = [*flat, *lexical]
    best = run.pick([best, *lexical])

    source = whole
    if any(space.subquery_ngrams):
        judged = list(range(len(texts)) if subquery_texts is None else subquery_texts)
        sample = [judged[i] for i in _sample(len(judged), space.subquery_sample)]
        sampled = run.search([texts[i] for i in sample], [gold[i] for i in sample],
                             best.neighbours, widen)
        base = (best if len(sample) == len(texts)
                else run.rank(sampled.at(best.neighbours), best.aggregation, best.stages()))
        subs = _subquery_settings(run, sampled.at(best.neighbours), best, space)
        results += ([] if base is best else [base]) + subs
        if subs and run.pick([base, *subs]) is not base:
            best, source = run.pick(subs), sampled
            if len(sample) < len(texts) and subquery_texts is not None:
                everything = _sample(len(texts), space.subquery_sample)
                source = run.search([texts[i] for i in everything],
                                    [gold[i] for i in everything], best.neighbours, widen)
                best = run.rank(source.at(best.neighbours), best.aggregation, best.stages())
                results.append(best)

    flat_best = best
    for depth in branch_depths:
        for count in space.branch_counts:
            config = BranchConfig(depth, count, widen)
            cal = run.rank(source.at(flat_best.neighbours), flat_best.aggregation,
                           [*flat_best.stages(), BranchStage(config)])
            results.append(cal)
            if run.allowed(cal) and beats_flat(cal, flat_best) and (
                    best is flat_best or _key(cal) > _key(best)):
                best = cal
    return best, results


def _subquery_settings(run: _Runner, parts: _Searched, best: Calibration,
                       space: SearchSpace) -> list[Calibration]:
    """Sub-query settings, one lever at a time: n-grams x neighbours per part (fewer
    neighbours first, so each depth is searched, and timed, for real), then the weight, the
    words per sentence part, and the lexical weight on top."""
    weight, words = space.subquery_weights[0], space.subquery_max_words[0]

    def ranked(config: SubqueryConfig, lexical: float = 0.0) -> Calibration:
        stages: list[CandidateStage] = [SubqueryStage(config)]
        if lexical:
            stages.append(LexicalStage(lexical))
        return run.rank(parts, best.aggregation, stages)

    tried = [ranked(SubqueryConfig(n, words, weight, nn))
             for nn in sorted(space.subquery_neighbours) for n in space.subquery_ngrams if n]
    if not tried:
        return []
    top = run.pick(tried)
    for lever in ("weight", "max_words"):
        values = space.subquery_weights if lever == "weight" else space.subquery_max_words
        assert top.subqueries is not None
        more = [ranked(replace(top.subqueries, **{lever: v})) for v in values
                if v != getattr(top.subqueries, lever)]
        tried += more
        top = run.pick([top, *more])
    assert top.subqueries is not None
    lexical = [ranked(top.subqueries, w) for w in space.lexical_weights if w]
    return [*tried, *lexical]


@dataclass(frozen=True)
class _Searched:
    """One search of the dev texts (or a sample of them), with its gold and cost per text."""

    search: Search
    gold: Sequence[Sequence[str]]
    seconds_per_text: float

    def at(self, depth: int) -> _Searched:
        """The same search read to `depth` neighbours per unit (rank slices the hits)."""
        return replace(self, search=replace(self.search, depth_unit=depth))


class _Runner:
    """Ranks, scores and times settings on searches of the dev texts."""

    def __init__(self, memo: MemoIndex, top_k: int, metric: str,
                 branch_of: Callable[[str], str] | None, scopes: tuple[bool, ...],
                 min_texts_per_s: float, none_share: float | None = None) -> None:
        self.memo, self.top_k, self.metric, self.none_share = memo, top_k, metric, none_share
        self.branch_of, self.scopes, self.floor = branch_of, scopes, min_texts_per_s
        self.retriever = Retriever(memo, Aggregation(), evidence=False)

    def search(self, texts: Sequence[str], gold: Sequence[Sequence[str]], depth: int,
               widen: int) -> _Searched:
        """Embed and search the texts once, `depth` neighbours per unit, timed."""
        self.retriever.neighbours = depth
        seconds = self._timed(lambda: self.retriever.search(texts, self.top_k, widen=widen,
                                                            with_vectors=False))
        return _Searched(self._last, gold, seconds / len(texts))

    def rank(self, searched: _Searched, how: Aggregation,
             stages: Sequence[CandidateStage]) -> Calibration:
        """One setting: its shortlists, best threshold, candidate recall and texts/s."""
        seconds = self._timed(lambda: self.retriever.rank(searched.search, how, stages))
        shortlists, gold = self._last, searched.gold
        widest = max((len(g) for g in gold), default=1)
        grid = sorted({1, 2, 3, 5, min(widest, 10)} if widest > 1 else {1})
        select_by = "f1_samples" if self.metric == "candidate_recall" else self.metric
        matrix = ShortlistMatrix(shortlists, gold, self.branch_of, self.none_share)
        rule, value = best_threshold(matrix, select_by, grid, self.scopes)
        recall = candidate_recall(shortlists, gold)
        per_text = searched.seconds_per_text + seconds / len(gold)
        kinds = {type(s): s for s in stages}
        sub, lexical = kinds.get(SubqueryStage), kinds.get(LexicalStage)
        branch = kinds.get(BranchStage)
        return Calibration(
            how, rule, self.metric, recall if self.metric == "candidate_recall" else value,
            recall, branch.config if isinstance(branch, BranchStage) else None,
            searched.search.depth_unit,
            sub.config if isinstance(sub, SubqueryStage) else None,
            lexical.weight if isinstance(lexical, LexicalStage) else 0.0,
            1.0 / per_text if per_text > 0 else float("inf"), len(gold))

    def allowed(self, cal: Calibration) -> bool:
        """Fast enough for the speed floor."""
        return cal.texts_per_s >= self.floor

    def pick(self, settings: Sequence[Calibration], floor: bool = False) -> Calibration:
        """The best allowed setting (ties: the first); with `floor`, the fastest when none is."""
        allowed = [s for s in settings if self.allowed(s)]
        if not allowed:
            return max(settings, key=lambda s: s.texts_per_s) if floor else settings[0]
        return max(allowed, key=_key)

    def _timed(self, work: Callable[[], Any]) -> float:
        # Wall time plus what the memo handed out again: what serving this would have cost.
        charged, started = self.memo.charged, time.perf_counter()
        self._last = work()
        return time.perf_counter() - started + self.memo.charged - charged


def _key(cal: Calibration) -> tuple[float, float]:
    return (cal.value, cal.candidate_recall)


def _sample(count: int, size: int) -> list[int]:
    """A stable spread sample of positions (by a hash of the position), in order."""
    if count <= size:
        return list(range(count))
    ranked = sorted(range(count), key=lambda i: hashlib.sha1(str(i).encode()).digest())
    return sorted(ranked[:size])
