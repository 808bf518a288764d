"""The calibration search: every lever the retriever serves, each setting ranked by the serving
code (`Retriever.rank`) on one dev set, scored with its best threshold and timed.

Aggregation x depth is a grid (one search is ranked many ways; with `grid_keep`, every
aggregation at one depth, then the best few at the others); then each stage kind of the
registry in its order, round by round over the values the kind declares, from the best setting
so far. A kind is kept only when its best setting beats the one without it by the kind's
margin. A costly (sampled) kind can be screened on a few texts first, so that only its best
variant is ranked on the whole sample; a budget of work stops the budgeted kinds not yet tried
(counted in reference seconds, `retrieval/calibration/work.py`: the same stop on any machine).
Stages are handled only through `StageKind`: a registered stage is calibrated without a line
here."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from types import SimpleNamespace
from typing import Any

from retrieval.calibration.memo_index import MemoIndex
from retrieval.calibration.reuse import KEPT, StageOutputs
from retrieval.calibration.scoring import (
    METRICS,
    Calibration,
    ShortlistMatrix,
    beats,
    best_threshold,
    candidate_recall,
)
from retrieval.calibration.work import COSTS, WorkMeter
from retrieval.fusion import Aggregation
from retrieval.retriever import Retriever
from retrieval.stages import CandidateStage, Search, StageKind
from retrieval.taxonomy import taxonomy_of

AGGREGATIONS = (Aggregation("max", 0, None),
                *(Aggregation("rrf", k, m) for k in (1.0, 10.0, 60.0) for m in (1, 3, 5, None)))
StageSettings = Mapping[str, object]



# A screening subset is small (64 texts: one text moves f1 by 0.016), so a variant goes on to
# the whole sample unless it loses there by more than this; the whole sample then decides with
# the kind's own margin. Promoting only winners screened sub-queries out of an ESCO sub-catalog
# whose full search kept them (RP@10 on tech_valid's report half: 70.3 against 84.1).
SCREEN_TOLERANCE = 0.02
# A screen decides only where it saves most of a kind's work (on a sample at least this many
# times its size), or where a budget cannot afford the whole sample (the screen's work scaled
# to it, leaving as much again for the kinds after it); else the whole sample decides.
# On an ESCO sub-catalog (3,165 labels, no examples) 64 of the 160 user-like texts screened
# sub-queries out (0.393 against 0.426 f1) that all 160 kept; the kept setting scored RP@10
# 84.1 / 83.6 on tech / house valid's report halves against 73.2 / 78.8. On the demo catalog
# (188 user-like texts, a 30 s budget) the whole sample's sub-queries spent the budget that
# token matching, tried after them, needed.
SCREEN_SHARE = 4

@dataclass(frozen=True)
class SearchSpace:
    """What calibration tries. `kinds`: the stage kinds, in the registry's order; `start`: the
    Settings fields they read, as configured (each kind starts switched off); `levers`: for a
    stage field, the values to try instead of the kind's own (empty: not searched)."""

    kinds: tuple[type[StageKind], ...] = ()
    start: StageSettings = field(default_factory=dict)
    levers: Mapping[str, tuple[object, ...]] = field(default_factory=dict)
    aggregations: tuple[Aggregation, ...] = AGGREGATIONS
    depths: tuple[int, ...] = (50, 100, 200)
    # A sampled (costly) kind is compared on a stable sample of this many dev texts, against
    # the best setting without it on the same texts.
    sample: int = 400
    # With `screen`, a sampled kind's variants are first ranked on this many of its texts, and
    # only the best of them on the whole sample (0: every variant on the whole sample).
    screen: int = 0
    # With `grid_keep`, every aggregation is ranked at the middle depth, then only the best
    # `grid_keep` at the other depths (0: the full grid).
    grid_keep: int = 0
    # Stage outputs shared by settings that differ only in later stages (off: recomputed, to
    # time the search as it was before).
    reuse: bool = True
    per_branch: bool = True  # also try a relative threshold against the branch's top

    @classmethod
    def only(cls, aggregation: Aggregation, neighbours: int, kinds: tuple[type[StageKind], ...],
             settings: StageSettings, per_branch: bool = True) -> SearchSpace:
        """One retrieval setting (its stages as `settings` configure them): calibrate its
        threshold only."""
        frozen = {name: () for kind in kinds for name in kind.fields}
        return cls(kinds, settings, frozen, (aggregation,), (neighbours,),
                   per_branch=per_branch)

    def values(self, kind: type[StageKind], index: Any) -> dict[str, tuple[object, ...]]:
        """The values tried for each of the kind's fields on this index (empty: none)."""
        own = kind.space(index)
        return {name: tuple(self.levers.get(name, values)) for name, values in own.items()}

    def switched_off(self) -> dict[str, object]:
        """The start with every kind off."""
        off = dict(self.start)
        for kind in self.kinds:
            off.update(kind.off)
        return off


@dataclass
class SearchLog:
    """What a search did: settings ranked and on how many texts, texts encoded, stage outputs
    reused, and the kinds a spent budget left untried (or cut part way); `wall_cut`: the
    budget that stopped it was the wall-clock limit, not the work's."""

    ranked: int = 0
    texts_ranked: int = 0  # the sum over ranked settings of the dev texts each was ranked on
    encoded: int = 0
    reused: int = 0
    planned: int = 0  # settings the search expects to rank (more when a sampled kind wins)
    screened_out: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    wall_cut: bool = False
    # Told (step, settings ranked, planned) after each setting ranked.
    progress: Callable[[str, int, int], None] | None = None

    def describe(self) -> dict[str, object]:
        """As saved in a calibration record."""
        out: dict[str, object] = {"settings_ranked": self.ranked,
                                  "texts_ranked": self.texts_ranked, "texts_encoded":
                                  self.encoded, "stage_outputs_reused": self.reused}
        if self.screened_out:
            out["screened_out"] = self.screened_out
        if self.skipped:
            out["budget_skipped"] = self.skipped
        if self.wall_cut:
            out["wall_clock_cut"] = True
        return out


class _OutOfTime(Exception):
    """The search's budget is spent."""


def search_settings(index: Any, texts: Sequence[str], gold: Sequence[Sequence[str]],
                    top_k: int, metric: str, space: SearchSpace,
                    min_texts_per_s: float = 0.0,
                    sampled_texts: Sequence[int] | None = None,
                    none_share: float | None = None,
                    budget_s: float | None = None,
                    log: SearchLog | None = None,
                    meter: WorkMeter | None = None,
                    wall_deadline: float | None = None,
                    ) -> tuple[Calibration, list[Calibration]]:
    """The best setting in `space` on these texts, and every setting tried. `index` is a
    LabelIndex or a view of one (`HeldOutIndex`). Settings slower than `min_texts_per_s` are
    reported but not chosen (unless every whole-text setting is). Sampled kinds are judged on
    the texts at `sampled_texts` (default: all); when one wins there, the winner is ranked on
    all texts again for its threshold. With `none_share`, the metric weighs the out-of-scope
    dev texts as that share of all texts (see `text_weights`). Once `meter` (the work done so
    far, in reference seconds) passes `budget_s`, the grid is finished and no further setting
    of a budgeted kind is ranked: the kinds left are named in `log.skipped`. `wall_deadline` (a
    `time.perf_counter()` value) is a last resort for a much slower machine, and the only stop
    that depends on the machine: `log.wall_cut` says when it stopped the search."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    if not texts:
        raise ValueError("calibration needs at least one dev text")
    log = log if log is not None else SearchLog()
    memo = MemoIndex(index, meter)
    taxonomy = taxonomy_of(index.labels)
    branch_of = ((lambda label_id: taxonomy.branch(label_id, 0))
                 if taxonomy.max_depth() > 0 else None)
    scopes = (False, True) if branch_of and space.per_branch else (False,)
    run = _Runner(memo, top_k, metric, branch_of, scopes, min_texts_per_s, none_share,
                  space.kinds, log, space.reuse)
    run.wall_deadline = wall_deadline
    tried = {kind: space.values(kind, memo) for kind in space.kinds}  # a head trains here
    tried = {kind: values for kind, values in tried.items() if any(values.values())}
    widen = math.prod(kind.max_widen for kind in tried)

    depths = sorted({max(d, top_k) for d in space.depths})
    log.planned = _planned(space, depths, tried)
    whole = run.search(texts, gold, depths[-1], widen)
    results = _grid(run, whole, depths, space)
    best, source = run.pick(results, floor=True), whole
    for kind, values in tried.items():
        run.budget_s = budget_s if kind.budgeted else None
        if run.out_of_time():  # before a sampled kind embeds and searches its sample
            log.skipped.append(_name(kind))
            continue
        try:
            best, source = _judge(run, kind, values, best, source, texts, gold, space,
                                  sampled_texts, widen, results)
        except _OutOfTime:
            log.skipped.append(_name(kind))
    log.encoded, log.reused = memo.encoded, run.outputs.reused
    return best, results


def _grid(run: _Runner, whole: _Searched, depths: Sequence[int],
          space: SearchSpace) -> list[Calibration]:
    """Aggregation x depth, every kind off: the full grid, or (`grid_keep`) every aggregation
    at the middle depth and the best few at the others."""
    off = space.switched_off()
    if not space.grid_keep or len(depths) == 1:
        return [run.rank(whole.at(d), how, off, "grid") for d in depths
                for how in space.aggregations]
    middle = depths[len(depths) // 2]
    first = [run.rank(whole.at(middle), how, off, "grid") for how in space.aggregations]
    kept = {id(cal) for cal in sorted(first, key=_key, reverse=True)[:space.grid_keep]}
    kept_hows = [cal.aggregation for cal in first if id(cal) in kept]  # in the space's order
    return first + [run.rank(whole.at(d), how, off, "grid") for d in depths if d != middle
                    for how in kept_hows]


def _planned(space: SearchSpace, depths: Sequence[int],
             tried: Mapping[type[StageKind], Mapping[str, tuple[object, ...]]]) -> int:
    """How many settings the search ranks, when no sampled kind wins (for progress)."""
    grid = len(space.aggregations) * (len(depths) if not space.grid_keep or len(depths) == 1
                                      else 1 + min(space.grid_keep, len(space.aggregations))
                                      * (len(depths) - 1))
    count = grid
    for kind, values in tried.items():
        count += sum(math.prod(len(values.get(name, ())) or 1 for name in fields) - 1
                     for fields in kind.rounds) + (2 if kind.sampled else 0)
    return count


def _judge(run: _Runner, kind: type[StageKind], values: Mapping[str, tuple[object, ...]],
           best: Calibration, source: _Searched, texts: Sequence[str],
           gold: Sequence[Sequence[str]], space: SearchSpace,
           sampled_texts: Sequence[int] | None, widen: int,
           results: list[Calibration]) -> tuple[Calibration, _Searched]:
    """One kind's rounds from the best setting so far; returns the new best and its search
    (the same when the kind does not win). Every setting ranked is added to `results`."""
    step = _name(kind)
    sample: list[int] = list(range(len(texts)))
    if kind.sampled:
        judged = list(range(len(texts)) if sampled_texts is None else sampled_texts)
        sample = [judged[i] for i in _sample(len(judged), space.sample)]
        sampled = run.search([texts[i] for i in sample], [gold[i] for i in sample],
                             best.neighbours, widen)
        base = (best if len(sample) == len(texts)
                else run.rank(sampled.at(best.neighbours), best.aggregation,
                              best.stage_settings, step))
        results += [] if base is best else [base]
    else:
        sampled, base = source, best
    top: Calibration | None = None
    screened = False
    large = len(sample) >= SCREEN_SHARE * space.screen
    if kind.sampled and space.screen and len(sample) > space.screen and (
            large or run.budget_s is not None):
        started = run.memo.meter.spent
        chosen = _screened(run, kind, values, base, sample, texts, gold, space, widen, results)
        whole = (run.memo.meter.spent - started) * len(sample) / space.screen
        screened = large or not run.affords(whole)
        if screened and chosen is None:
            run.log.screened_out.append(step)
        elif screened:
            top = run.rank(sampled.at(best.neighbours), base.aggregation, chosen, step)
            results.append(top)
    if not screened:
        top, more = _rounds(run, sampled.at(best.neighbours), base, kind, values)
        results += more
    if top is None or not run.allowed(top) or not beats(top, base, kind.margin):
        return best, source
    best, source = top, sampled
    if kind.sampled and len(sample) < len(texts) and sampled_texts is not None:
        everything = _sample(len(texts), space.sample)
        source = run.search([texts[i] for i in everything], [gold[i] for i in everything],
                            best.neighbours, widen)
        best = run.rank(source.at(best.neighbours), best.aggregation, best.stage_settings,
                        step)
        results.append(best)
    return best, source


def _screened(run: _Runner, kind: type[StageKind], values: Mapping[str, tuple[object, ...]],
              base: Calibration, sample: Sequence[int], texts: Sequence[str],
              gold: Sequence[Sequence[str]], space: SearchSpace, widen: int,
              results: list[Calibration]) -> StageSettings | None:
    """The kind's rounds on a screening subset of its sample; the settings of its best variant
    when that beats the base on the same texts (None: the kind is screened out)."""
    screen = [sample[i] for i in _sample(len(sample), space.screen)]
    searched = run.search([texts[i] for i in screen], [gold[i] for i in screen],
                          base.neighbours, widen).at(base.neighbours)
    screen_base = run.rank(searched, base.aggregation, base.stage_settings, _name(kind))
    # Every round, not only the first: on ESCO the first round's sub-queries (weight 0.5) lost
    # and the weight round (0.7), which the full search keeps, never ran.
    top, more = _rounds(run, searched, screen_base, kind, values)
    results += [screen_base, *more]
    if top is None or not beats(top, screen_base, -SCREEN_TOLERANCE):
        return None
    return top.stage_settings


def _rounds(run: _Runner, searched: _Searched, base: Calibration, kind: type[StageKind],
            values: Mapping[str, tuple[object, ...]]
            ) -> tuple[Calibration | None, list[Calibration]]:
    """A kind's rounds: each tries its fields' values from the best of the rounds before it
    (the first, from `base`); returns the kind's best setting (None: nothing tried) and all."""
    top: Calibration | None = None
    tried: list[Calibration] = []
    for fields in kind.rounds:
        start = (top or base).stage_settings
        variants = [{**start, **dict(zip(fields, combo, strict=True))}
                    for combo in product(*(values.get(name, (start[name],))
                                           for name in fields))]
        ranked = [run.rank(searched, base.aggregation, v, _name(kind)) for v in variants
                  if v != start and kind.from_settings(SimpleNamespace(**v)) is not None]
        if ranked:
            tried += ranked
            top = run.pick([top, *ranked] if top else ranked)
    return top, tried


@dataclass(frozen=True)
class _Searched:
    """One search of the dev texts (or a sample of them), with its gold and cost per text."""

    search: Search
    gold: Sequence[Sequence[str]]
    seconds_per_text: float
    key: int = 0  # which search of the run (stage outputs are remembered per search)

    def at(self, depth: int) -> _Searched:
        """The same search read to `depth` neighbours per unit (rank slices the hits)."""
        return replace(self, search=replace(self.search, depth_unit=depth))


class _Runner:
    """Ranks, scores and times settings on searches of the dev texts."""

    def __init__(self, memo: MemoIndex, top_k: int, metric: str,
                 branch_of: Callable[[str], str] | None, scopes: tuple[bool, ...],
                 min_texts_per_s: float, none_share: float | None,
                 kinds: tuple[type[StageKind], ...], log: SearchLog,
                 reuse: bool = True) -> None:
        self.memo, self.top_k, self.metric, self.none_share = memo, top_k, metric, none_share
        self.branch_of, self.scopes, self.floor = branch_of, scopes, min_texts_per_s
        self.kinds, self.log = kinds, log
        self.retriever = Retriever(memo, Aggregation(), evidence=False)
        self.outputs = StageOutputs(memo, kept=KEPT if reuse else 0)
        self.searches = 0
        self.budget_s: float | None = None  # of work, for the kind being judged
        self.wall_deadline: float | None = None

    def out_of_time(self) -> bool:
        """The budget (if any) is spent, or the wall-clock limit passed."""
        if self.budget_s is None:
            return False
        if self.memo.meter.spent > self.budget_s:
            return True
        if self.wall_deadline is not None and time.perf_counter() > self.wall_deadline:
            self.log.wall_cut = True
            return True
        return False

    def affords(self, work_s: float) -> bool:
        """Work of about `work_s` leaves at least as much again for the kinds after it."""
        return self.budget_s is None or 2 * work_s <= self.budget_s - self.memo.meter.spent

    def search(self, texts: Sequence[str], gold: Sequence[Sequence[str]], depth: int,
               widen: int) -> _Searched:
        """Embed and search the texts once, `depth` neighbours per unit, timed."""
        self.retriever.neighbours = depth
        seconds = self._timed(lambda: self.retriever.search(texts, self.top_k, widen=widen,
                                                            with_vectors=False), "search", 0.0)
        self.searches += 1
        return _Searched(self._last, gold, seconds / len(texts), self.searches)

    def rank(self, searched: _Searched, how: Aggregation, stage_settings: StageSettings,
             step: str = "") -> Calibration:
        """One setting: its shortlists, best threshold, candidate recall and texts/s."""
        if self.out_of_time():
            raise _OutOfTime
        configured = SimpleNamespace(**stage_settings)
        stages: list[CandidateStage] = []
        keys: list[Hashable] = []
        for kind in self.kinds:
            if (stage := kind.from_settings(configured)) is not None:
                stages.append(stage)
                # Everything this stage's output depends on: the stages up to it, the search.
                keys.append(tuple(sorted((name, stage_settings.get(name))
                                         for name in kind.fields)))
        widen = math.prod(stage.widen for stage in stages)
        prefix = (searched.key, searched.search.depth_unit, how, widen)
        keys = [(*prefix, *keys[:n + 1]) for n in range(len(keys))]
        served = self.outputs.wrap(stages, keys)
        seconds = self._timed(lambda: self.retriever.rank(searched.search, how, served), "rank",
                              len(searched.gold) * COSTS["rank_text"])
        shortlists, gold = self._last, searched.gold
        scoring = time.perf_counter()
        widest = max((len(g) for g in gold), default=1)
        grid = sorted({1, 2, 3, 5, min(widest, 10)} if widest > 1 else {1})
        select_by = "f1_samples" if self.metric == "candidate_recall" else self.metric
        matrix = ShortlistMatrix(shortlists, gold, self.branch_of, self.none_share)
        rule, value = best_threshold(matrix, select_by, grid, self.scopes)
        recall = candidate_recall(shortlists, gold)
        self.memo.meter.charge("score", len(gold) * COSTS["score_text"],
                               time.perf_counter() - scoring)
        per_text = searched.seconds_per_text + seconds / len(gold)
        self.log.ranked += 1
        self.log.texts_ranked += len(gold)
        if self.log.progress:
            self.log.progress(step, self.log.ranked, max(self.log.planned, self.log.ranked))
        return Calibration(
            how, rule, self.metric, recall if self.metric == "candidate_recall" else value,
            recall, searched.search.depth_unit, tuple(stages), dict(stage_settings),
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

    def _timed(self, work: Callable[[], Any], kind: str, reference_s: float) -> float:
        """Run `work`, counting its own part as `kind` (`reference_s`) on the meter; returns its
        wall time plus what the memo handed out again: what serving it would have cost."""
        meter = self.memo.meter
        charged, asked, started = self.memo.charged, meter.wall_total, time.perf_counter()
        self._last = work()
        took = time.perf_counter() - started
        meter.charge(kind, reference_s, took - (meter.wall_total - asked))
        return took + self.memo.charged - charged


def _key(cal: Calibration) -> tuple[float, float]:
    return (cal.value, cal.candidate_recall)


def _sample(count: int, size: int) -> list[int]:
    """A stable spread sample of positions (by a hash of the position), in order."""
    if count <= size:
        return list(range(count))
    ranked = sorted(range(count), key=lambda i: hashlib.sha1(str(i).encode()).digest())
    return sorted(ranked[:size])


def _name(kind: type[StageKind]) -> str:
    """A kind by the first Settings field it reads (`subqueries`, `lexical_weight`, ...)."""
    return kind.fields[0]
