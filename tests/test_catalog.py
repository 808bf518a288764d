"""Catalog and examples loading: every malformed input names the line or field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.catalog import load_catalog, load_examples
from retrieval.errors import CatalogError
from tests.conftest import MINI_CATALOG


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_mini_catalog_loads_with_hierarchy() -> None:
    catalog = load_catalog(MINI_CATALOG)
    assert len(catalog) == 9
    assert not catalog.labels["pets"].assignable
    assert [a.id for a in catalog.ancestors("pets.dogs")] == ["pets"]
    assert catalog.labels["pets.dogs"].aliases == ("puppies",)


@pytest.mark.parametrize(
    ("rows", "message", "field"),
    [
        ([{"id": "a", "name": "A"}, "{not json"], "catalog.jsonl:2: not valid JSON", None),
        ([{"name": "no id here"}], "catalog.jsonl:1: field 'id'", "id"),
        ([{"id": "a", "name": "A"}, {"id": "a", "name": "B"}], "duplicate label id 'a'", "id"),
        ([{"id": "a", "name": "A", "parent": "ghost"}], "parent 'ghost'", "parent"),
        ([{"id": "a", "name": "A", "parent": "b"}, {"id": "b", "name": "B", "parent": "a"}],
         "parent cycle", "parent"),
        ([["a", "list"]], "catalog.jsonl:1: expected a JSON object", None),
        ([{"id": "a", "name": ""}], "field 'name'", "name"),
    ],
)
def test_malformed_catalog_is_named(tmp_path: Path, rows: list, message: str,
                                    field: str | None) -> None:
    path = write_lines(tmp_path / "catalog.jsonl", rows)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog(path)
    assert info.value.detail.get("field") == field
    assert info.value.status == 422


def test_empty_catalog_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl"
    path.write_text("\n")
    with pytest.raises(CatalogError, match="no labels"):
        load_catalog(path)


def test_csv_catalog_and_examples(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("id,name,description,parent\nroot,Root,,\n7,Seven,the number,root\n")
    catalog = load_catalog(labels)
    assert catalog.labels["7"].parent == "root"
    examples = tmp_path / "examples.csv"
    examples.write_text('label_id,text\n7,"seven, as in 7"\n7,lucky number\n')
    assert load_examples(examples, catalog) == {"7": ["seven, as in 7", "lucky number"]}


def test_examples_for_unknown_label_name_the_line(tmp_path: Path) -> None:
    catalog = load_catalog(MINI_CATALOG)
    path = write_lines(tmp_path / "train.jsonl", [
        {"text": "a dog", "labels": ["pets.dogs"]},
        {"text": "a unicorn", "labels": ["pets.unicorns"]},
    ])
    with pytest.raises(CatalogError, match=r"train.jsonl:2: unknown label id 'pets.unicorns'"):
        load_examples(path, catalog)


def test_examples_without_text_name_the_line(tmp_path: Path) -> None:
    catalog = load_catalog(MINI_CATALOG)
    path = write_lines(tmp_path / "train.jsonl", [{"text": "  ", "labels": ["pets.dogs"]}])
    with pytest.raises(CatalogError, match=r"train\.jsonl:1: missing or empty 'text'"):
        load_examples(path, catalog)


def test_out_of_scope_examples_are_not_examples(tmp_path: Path) -> None:
    catalog = load_catalog(MINI_CATALOG)
    path = write_lines(tmp_path / "train.jsonl", [{"text": "what time is it", "labels": []}])
    assert load_examples(path, catalog) == {}


def test_examples_merge_without_duplicates() -> None:
    catalog = load_catalog(MINI_CATALOG)
    merged = catalog.with_examples({"pets.cats": ["my cat scratches the furniture", "new one"]})
    assert merged.labels["pets.cats"].examples[-1] == "new one"
    assert len(merged.labels["pets.cats"].examples) == 4
    assert merged.fingerprint() != catalog.fingerprint()
