"""Versioned prompt files: `prompts/<task>/v<N>.toml`, loaded and validated strictly."""

from __future__ import annotations

import hashlib
import string
import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from retrieval.errors import LabelrankError

PROMPTS_DIR = Path(__file__).parent
REQUIRED = {"candidates", "text"}
ALLOWED = {"candidates", "text", "max_labels"}


class PromptError(LabelrankError):
    """Raised when a prompt file is missing, malformed or names unknown variables."""

    code = "invalid_prompt"
    status = 422


class PromptTemplate(BaseModel):
    """A released prompt: system and user templates with `$placeholders`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    version: str
    sha256: str
    description: str = ""
    system: str
    user: str

    @property
    def ref(self) -> str:
        """`task@version`, as settings and run files name it."""
        return f"{self.task}@{self.version}"

    def render(self, **values: object) -> tuple[str, str]:
        """The system and user messages with placeholders filled."""
        return (string.Template(self.system).substitute(values),
                string.Template(self.user).substitute(values))


def load_prompt(ref: str, directory: Path = PROMPTS_DIR, required: AbstractSet[str] = REQUIRED,
                allowed: AbstractSet[str] = ALLOWED) -> PromptTemplate:
    """Load `task@vN` (or a path to a .toml file) and check its placeholders (the select
    task's unless a task's own are given)."""
    path = Path(ref)
    if path.suffix == ".toml" and path.is_file():
        task, version = path.parent.name, path.stem
    else:
        task, _, version = ref.partition("@")
        path = directory / task / f"{version or 'v1'}.toml"
        version = version or "v1"
    if not path.is_file():
        raise PromptError(f"prompt {ref!r} not found (looked for {path})", prompt=ref)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode())
        template = PromptTemplate(task=task, version=version,
                                  sha256=hashlib.sha256(raw).hexdigest(), **data)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise PromptError(f"prompt {ref!r} is invalid: {exc}", prompt=ref) from None
    used = _placeholders(template.system) | _placeholders(template.user)
    if missing := required - used:
        raise PromptError(f"prompt {ref!r} lacks placeholders {sorted(missing)}", prompt=ref)
    if unknown := used - allowed:
        raise PromptError(f"prompt {ref!r} uses unknown placeholders {sorted(unknown)}", prompt=ref)
    return template


def _placeholders(text: str) -> set[str]:
    return {m.group("named") or m.group("braced")
            for m in string.Template.pattern.finditer(text)
            if m.group("named") or m.group("braced")}
