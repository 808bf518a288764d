"""Load and validate label catalogs and labeled examples (JSONL or CSV)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from retrieval.errors import CatalogError
from retrieval.iterables import dedupe
from retrieval.rows import csv_rows, format_of, jsonl_rows


class LabelRecord(BaseModel):
    """One catalog line as users write it; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=256)
    name: str = Field(min_length=1)
    description: str = ""
    aliases: list[str] = []
    parent: str | None = None
    assignable: bool = True
    examples: list[str] = []

    @field_validator("id", "parent", mode="before")
    @classmethod
    def _ids_are_strings(cls, value: object) -> object:
        # Numeric ids are common in CSV exports; keep them as their text.
        return str(value) if isinstance(value, int) else value

    @field_validator("parent", mode="after")
    @classmethod
    def _empty_parent_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("aliases", "examples", mode="after")
    @classmethod
    def _drop_blank(cls, values: list[str]) -> list[str]:
        return [v.strip() for v in values if v and v.strip()]


@dataclass(frozen=True)
class Label:
    """A catalog label with the texts that represent it in the index."""

    id: str
    name: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    parent: str | None = None
    assignable: bool = True
    examples: tuple[str, ...] = field(default=(), compare=False)

    def content_hash(self) -> str:
        """Hash of everything that is stored for this label, examples included."""
        blob = json.dumps(
            [self.id, self.name, self.description, self.aliases, self.parent, self.assignable,
             sorted(set(self.examples))],
            ensure_ascii=False,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Catalog:
    """Labels by id, in file order, validated as a whole (ids, parents, no cycles)."""

    labels: dict[str, Label]

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label_id: object) -> bool:
        return label_id in self.labels

    def ancestors(self, label_id: str) -> list[Label]:
        """The label's ancestors, root first."""
        chain: list[Label] = []
        parent = self.labels[label_id].parent
        while parent is not None:
            chain.append(self.labels[parent])
            parent = self.labels[parent].parent
        return chain[::-1]

    def fingerprint(self) -> str:
        """Order-independent hash of the whole catalog."""
        digest = hashlib.sha256()
        for label_id in sorted(self.labels):
            digest.update(self.labels[label_id].content_hash().encode())
        return digest.hexdigest()[:16]

    def with_examples(self, examples: dict[str, list[str]]) -> Catalog:
        """A copy where each label also carries the given example texts."""
        unknown = sorted(set(examples) - set(self.labels))
        if unknown:
            raise CatalogError(f"examples name unknown label ids: {unknown[:5]}", field="labels")
        merged = {
            lid: replace(label, examples=_nonempty([*label.examples, *examples.get(lid, [])]))
            for lid, label in self.labels.items()
        }
        return Catalog(merged)


def load_catalog(path: str | Path) -> Catalog:
    """Read a JSONL or CSV catalog and validate it as a whole."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog file not found: {path}", path=str(path))
    labels: dict[str, Label] = {}
    for line_no, row in _rows(path):
        record = _parse_record(row, path, line_no)
        if record.id in labels:
            raise CatalogError(
                f"{path.name}:{line_no}: duplicate label id {record.id!r}",
                path=str(path), line=line_no, field="id",
            )
        labels[record.id] = Label(
            id=record.id, name=record.name, description=record.description,
            aliases=tuple(_nonempty(record.aliases)), parent=record.parent,
            assignable=record.assignable, examples=tuple(_nonempty(record.examples)),
        )
    if not labels:
        raise CatalogError(f"catalog {path} has no labels", path=str(path))
    _check_parents(labels, path)
    return Catalog(labels)


@dataclass(frozen=True)
class SkippedRow:
    """An example row left out: its file, line and what was wrong with it."""

    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{Path(self.path).name}:{self.line}: {self.problem}"


def load_examples(path: str | Path, catalog: Catalog,
                  skipped: list[SkippedRow] | None = None) -> dict[str, list[str]]:
    """Read labeled texts (JSONL `{text, labels}` or CSV `label_id,text`) as examples per label.
    A bad row (unreadable, no text, no labels, an unknown label id) raises CatalogError, unless
    `skipped` is given: then the row is left out and listed there. A file with no good row at
    all is the wrong file, not a dirty one: its first bad row raises either way."""
    examples: dict[str, list[str]] = {}
    for text, label_ids in load_labelled(path, catalog, skipped):
        for label_id in label_ids:
            examples.setdefault(label_id, []).append(text)
    return examples


def load_labelled(path: str | Path, catalog: Catalog,
                  skipped: list[SkippedRow] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """The labeled rows of a file as (text, label ids), in file order (`[]`: out of scope);
    bad rows raise or are listed in `skipped`, as in `load_examples`."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"examples file not found: {path}", path=str(path))
    rows: list[tuple[str, tuple[str, ...]]] = []
    first_bad: CatalogError | None = None
    for line_no, row in _rows(path, tolerate=skipped is not None):
        try:
            label_ids, text = _example(row, path, line_no, catalog)
        except CatalogError as exc:
            if skipped is None:
                raise
            first_bad = first_bad or exc
            skipped.append(SkippedRow(str(path), line_no, str(exc).split(": ", 1)[-1]))
            continue
        rows.append((text, tuple(label_ids)))
    if first_bad is not None and not rows:
        raise first_bad
    return rows


def _example(row: dict | str, path: Path, line_no: int,
             catalog: Catalog) -> tuple[list[str], str]:
    """One example row's label ids and text, or CatalogError naming the line."""
    def bad(problem: str, field: str | None = None) -> CatalogError:
        return CatalogError(f"{path.name}:{line_no}: {problem}", path=str(path), line=line_no,
                            field=field)

    if isinstance(row, str):  # a line that could not be read at all
        raise bad(row)
    if path.suffix.lower() == ".csv":
        label_ids, text = [str(row.get("label_id") or "").strip()], row.get("text")
    else:
        label_ids, text = row.get("labels"), row.get("text")
        if isinstance(label_ids, str):
            label_ids = [label_ids]
    if not isinstance(text, str) or not text.strip():
        raise bad("missing or empty 'text'", "text")
    if not isinstance(label_ids, list) or not all(isinstance(x, str) and x for x in label_ids):
        raise bad("'labels' must be a list of label ids", "labels")
    for label_id in label_ids:
        if label_id not in catalog:
            raise bad(f"unknown label id {label_id!r}", "labels")
    return label_ids, text.strip()


def _rows(path: Path, tolerate: bool = False) -> Iterator[tuple[int, dict | str]]:
    """The file's records (blank lines skipped, empty CSV cells dropped); a bad line raises,
    or with `tolerate` comes as the problem's description instead of a record."""
    fmt = format_of(path.name)
    if fmt == "csv":
        with path.open("rb") as raw:
            for line_no, line in enumerate(raw, start=1):
                _utf8(line, path, line_no)  # name the bad line before csv reads the file
    with path.open("rb") as stream:
        rows = (jsonl_rows(stream, skip_blank=True) if fmt == "jsonl"
                else csv_rows(stream, skip_blank=True, short_ok=True))
        for row in rows:
            if row.data is None:
                if tolerate:
                    yield row.line, str(row.problem)
                    continue
                raise CatalogError(f"{path.name}:{row.line}: {row.problem}",
                                   path=str(path), line=row.line)
            yield row.line, ({k: v for k, v in row.data.items() if v not in (None, "")}
                             if fmt == "csv" else row.data)


def _utf8(raw: bytes, path: Path, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path.name}:{line_no}: not valid UTF-8 (byte {exc.start + 1})",
                           path=str(path), line=line_no) from None


def _parse_record(row: dict, path: Path, line_no: int) -> LabelRecord:
    try:
        return LabelRecord.model_validate(row)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "line"
        raise CatalogError(
            f"{path.name}:{line_no}: field {where!r}: {err['msg']}",
            path=str(path), line=line_no, field=where,
        ) from None


def _check_parents(labels: dict[str, Label], path: Path) -> None:
    for label in labels.values():
        if label.parent is not None and label.parent not in labels:
            raise CatalogError(
                f"{path.name}: label {label.id!r} has parent {label.parent!r}, "
                "which is not in the catalog",
                path=str(path), field="parent", label_id=label.id,
            )
    for label in labels.values():
        seen = {label.id}
        parent = label.parent
        while parent is not None:
            if parent in seen:
                raise CatalogError(
                    f"{path.name}: parent cycle through label {label.id!r}",
                    path=str(path), field="parent", label_id=label.id,
                )
            seen.add(parent)
            parent = labels[parent].parent


def _nonempty(texts: Iterable[str]) -> list[str]:
    return dedupe(t for t in texts if t)
