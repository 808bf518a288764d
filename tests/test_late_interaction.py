"""Token matching over the shortlist: against a brute-force MaxSim, edits, weight 0."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from retrieval.calibration.memo_index import MemoIndex
from retrieval.catalog import Label
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.fusion import Aggregation, Candidate
from retrieval.index import LabelIndex, chroma_client
from retrieval.late_interaction import (
    TokenMatchStage,
    TokenVectorsUnavailable,
    label_phrases,
    token_embedder,
)
from retrieval.retriever import Retriever

LABELS = [
    Label("python", "Python (computer programming)", "A programming language.", ("python",)),
    Label("js", "JavaScript", "A scripting language for web pages.", ("ecmascript",)),
    Label("postgres", "PostgreSQL", "A relational database.", ("postgres",)),
    Label("staff", "manage staff", "Lead a team of employees.", ("supervise employees",)),
    Label("cook", "cooking", "Prepare food."),
]
TEXTS = ["we build services in python on top of postgres", "you will supervise our kitchen team"]
TOP_K = 5


@pytest.fixture
def index(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> LabelIndex:
    built = LabelIndex(chroma_client(tmp_path / "db"), embedder)
    for label in LABELS:
        built.upsert(label)
    return built


def brute_force(embedder: SentenceTransformerEmbedder, text: str, label: Label,
                direction: str) -> float:
    """MaxSim by hand: plain loops over the real embedder's token vectors."""
    text_tokens = embedder.embed_with_tokens([text])[1][0]
    best = -np.inf
    for phrase in label_phrases(label):
        phrase_tokens = embedder.embed_with_tokens([phrase])[1][0]
        outer, inner = ((phrase_tokens, text_tokens) if direction == "label"
                        else (text_tokens, phrase_tokens))
        total = 0.0
        for a in outer:
            total += max(float(np.dot(a, b)) for b in inner)
        best = max(best, total / len(outer))
    return best


def expected(index: LabelIndex, base: list[Candidate], text: str, weight: float,
             direction: str) -> list[tuple[str, float]]:
    """The pool re-scored as (1 - w) x score + w x MaxSim, best first."""
    scored = [(c.label_id, (1 - weight) * c.score + weight * brute_force(
        index.embedder, text, index.labels[c.label_id], direction)) for c in base]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def retriever(index: LabelIndex, *stages: TokenMatchStage) -> Retriever:
    return Retriever(index, Aggregation("max", 0, None), neighbours=20, stages=stages,
                     evidence=False)


@pytest.mark.parametrize("direction", ["label", "text"])
def test_stage_matches_brute_force_maxsim(index: LabelIndex, direction: str) -> None:
    base = retriever(index).candidates(TEXTS, TOP_K)
    stage = TokenMatchStage(0.5, direction)  # type: ignore[arg-type]
    got = retriever(index, stage).candidates(TEXTS, TOP_K)
    for text, before, after in zip(TEXTS, base, got, strict=True):
        want = expected(index, before, text, 0.5, direction)
        assert [c.label_id for c in after] == [label_id for label_id, _ in want]
        # The cache keeps label tokens in float16: scores agree to ~1e-3.
        assert [c.score for c in after] == pytest.approx([s for _, s in want], abs=2e-3)
        assert all(c.similarity == pytest.approx(c.score, abs=1e-6) for c in after)
    # The phrase-level match lifts what the text names word for word.
    assert got[0][0].label_id in {"python", "postgres"}


def test_edited_label_is_recomputed_and_others_are_kept(index: LabelIndex) -> None:
    stage = TokenMatchStage(0.5)
    retriever(index, stage).candidates(TEXTS, TOP_K)
    kept = stage.cache._entries["python"]
    assert stage.cache._entries["js"].phrases == ("JavaScript", "ecmascript")
    index.upsert(Label("js", "Node.js", "A JavaScript runtime.", ("nodejs", "kitchen team")))
    got = retriever(index, stage).candidates(TEXTS, TOP_K)
    assert stage.cache._entries["js"].phrases == ("Node.js", "nodejs", "kitchen team")
    assert stage.cache._entries["python"] is kept
    base = retriever(index).candidates(TEXTS, TOP_K)
    want = expected(index, base[1], TEXTS[1], 0.5, "label")
    assert [c.label_id for c in got[1]] == [label_id for label_id, _ in want]
    assert [c.score for c in got[1]] == pytest.approx([s for _, s in want], abs=2e-3)


def test_deleted_label_leaves_the_cache(index: LabelIndex) -> None:
    stage = TokenMatchStage(0.5)
    retriever(index, stage).candidates(TEXTS, TOP_K)
    index.delete(["cook"])
    got = retriever(index, stage).candidates(TEXTS, TOP_K)
    assert "cook" not in stage.cache._entries
    assert all(c.label_id != "cook" for pool in got for c in pool)


def test_weight_zero_changes_nothing(index: LabelIndex) -> None:
    assert TokenMatchStage.from_settings(SimpleNamespace(token_match_weight=0.0)) is None
    assert TokenMatchStage.from_settings(SimpleNamespace()) is None  # field not declared yet
    plain = retriever(index)
    search = plain.search(TEXTS, TOP_K)
    pools = plain.rank(search)
    assert TokenMatchStage(0.0).apply(index, search, pools, TOP_K) == pools
    assert plain.rank(search, stages=[TokenMatchStage(0.0)]) == pools


def test_pooled_vectors_are_embeds_own(embedder: SentenceTransformerEmbedder) -> None:
    pooled, tokens = embedder.embed_with_tokens(TEXTS)
    assert pooled == pytest.approx(embedder.embed(TEXTS), abs=1e-5)
    assert [len(t) for t in tokens] == [len(embedder._model.tokenize([t])["input_ids"][0]) - 2
                                        for t in TEXTS]  # [CLS] and [SEP] left out
    assert np.linalg.norm(tokens[0], axis=1) == pytest.approx(1.0, abs=1e-5)


def test_calibrations_memo_encodes_each_text_once_for_its_tokens(index: LabelIndex) -> None:
    memo = MemoIndex(index)
    assert token_embedder(memo.embedder) is memo.embedder
    pooled, tokens = memo.embedder.embed_with_tokens(TEXTS)
    direct_pooled, direct_tokens = index.embedder.embed_with_tokens(TEXTS)
    assert pooled == pytest.approx(direct_pooled, abs=1e-6)
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(tokens, direct_tokens, strict=True))
    charged = memo.charged
    again = memo.embedder.embed_with_tokens(TEXTS[:1])[1][0]
    assert again is tokens[0] and memo.charged > charged  # from memory, charged as it cost
    stub = SimpleNamespace(backend="process", embed=index.embedder.embed)
    with pytest.raises(TokenVectorsUnavailable):
        token_embedder(stub)


def test_deeper_pool_is_rescored_then_cut_to_the_shortlist(index: LabelIndex) -> None:
    base = retriever(index).candidates(TEXTS, 4)
    got = retriever(index, TokenMatchStage(0.5, widen=2)).candidates(TEXTS, 2)
    for text, before, after in zip(TEXTS, base, got, strict=True):
        want = expected(index, before, text, 0.5, "label")[:2]
        assert [c.label_id for c in after] == [label_id for label_id, _ in want]
