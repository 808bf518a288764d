"""Gold datasets: `{id?, text, labels}` JSONL, hashed so runs and caches can name them."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import LabelrankError
from retrieval.rows import jsonl_rows


class DatasetError(LabelrankError):
    """Raised when a gold dataset is missing, malformed, or a test split is misused."""

    code = "invalid_dataset"
    status = 422


@dataclass(frozen=True)
class Example:
    """One gold text."""

    id: str
    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A gold split with its content hash."""

    path: Path
    sha256: str
    examples: list[Example]
    half: str | None = None

    @property
    def name(self) -> str:
        """`<folder>/<file stem>`, e.g. `clinc150/valid`."""
        name = f"{self.path.parent.name}/{self.path.stem}"
        return f"{name}.{self.half}" if self.half else name


def load_dataset(path: str | Path, limit: int | None = None, half: str | None = None,
                 sample: int | None = None) -> Dataset:
    """Read a gold JSONL file; only half `a` or `b`, the first `limit` texts, or a stable
    pseudo-random `sample` of texts (files are often sorted by label), if asked."""
    path = Path(path)
    if half not in (None, "a", "b"):
        raise DatasetError(f"half must be 'a' or 'b', not {half!r}", field="half")
    if not path.is_file():
        raise DatasetError(f"dataset not found: {path}", path=str(path))
    raw = path.read_bytes()
    examples = []
    for row in jsonl_rows(io.BytesIO(raw), skip_blank=True):
        data = row.data or {}
        text, labels = data.get("text"), data.get("labels", [])
        if not isinstance(text, str) or not isinstance(labels, list):
            raise DatasetError(f"{path.name}:{row.line}: expected {{text, labels: [...]}}",
                               path=str(path), line=row.line)
        example = Example(str(data.get("id", row.line)), text, tuple(labels))
        if half and in_half(example.id) != half:
            continue
        examples.append(example)
        if limit and len(examples) >= limit:
            break
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if sample:
        examples = sorted(examples, key=lambda e: hashlib.sha1(e.id.encode()).digest())[:sample]
        digest = f"{digest}:sample{sample}"
    return Dataset(path, f"{digest}:{half}" if half else digest, examples, half)


def in_half(example_id: str) -> str:
    """Stable split of a dataset into halves `a` and `b` by id: calibrate on one, report on b."""
    return "a" if hashlib.sha1(example_id.encode()).digest()[0] % 2 == 0 else "b"


def refuse_test_split(path: str | Path) -> None:
    """Calibration and tuning must never see a test split."""
    if "test" in Path(path).stem.lower():
        raise DatasetError(f"{path} looks like a test split; calibrate on train or valid only",
                           path=str(path))
