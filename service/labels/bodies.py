"""What a live label edit takes: label and feedback bodies, checked as strictly as a catalog."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from retrieval.errors import LabelrankError


class InvalidLabelError(LabelrankError):
    """Raised when a label edit is invalid (unknown parent, a cycle, bad text)."""

    code = "invalid_label"
    status = 422


class LabelHasChildrenError(LabelrankError):
    """Raised when a label with children is deleted without cascade."""

    code = "label_has_children"
    status = 409


def _encodable(value: str) -> str:
    # Lone surrogates are valid JSON escapes but cannot reach the tokenizer or Chroma.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000),
                 AfterValidator(_encodable)]
Description = Annotated[str, StringConstraints(strip_whitespace=True),
                        AfterValidator(_encodable)]
LABEL_ID_PATTERN = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
LabelId = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                           pattern=LABEL_ID_PATTERN)]


class StrictModel(BaseModel):
    """A body that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


class LabelIn(StrictModel):
    """A whole label (PUT creates or replaces it, examples included); a catalog line or a
    label as GET returns it is accepted as it is."""

    id: LabelId | None = Field(None, description="Optional; must equal the id in the URL")
    name: Name
    description: Description = ""
    aliases: list[Name] = []
    parent: LabelId | None = None
    assignable: bool = True
    examples: list[Text] = []
    # GET answers carry these; they follow from `parent`, so a write ignores them.
    path: list[str] | None = Field(None, description="Read-only (ancestors); ignored")
    children: list[str] | None = Field(None, description="Read-only (set `parent` on a "
                                       "child to move it); ignored")

    def check_id(self, label_id: str) -> None:
        """Refuse a body whose `id` names another label than the URL does."""
        if self.id is not None and self.id != label_id:
            raise InvalidLabelError(f"the body's id {self.id!r} differs from the URL's "
                                    f"{label_id!r}; to rename a label, PUT the new id and "
                                    "DELETE the old one", field="id", label_id=label_id)


class LabelPatch(StrictModel):
    """Changes to one label; absent fields stay as they are."""

    name: Name | None = None
    description: Description | None = None
    parent: LabelId | None = Field(None, description="null makes the label a root")
    assignable: bool | None = None
    add_examples: list[Text] = []
    remove_examples: list[Text] = []
    add_aliases: list[Name] = []
    remove_aliases: list[Name] = []


class FeedbackIn(StrictModel):
    """A reviewed text: confirmed labels learn it as an example; rejected ones are logged."""

    text: Text
    labels: list[LabelId] = Field(default_factory=list, description="Labels that apply")
    rejected: list[LabelId] = Field(default_factory=list, description="Labels that do not")


class FeedbackOut(BaseModel):
    """What the feedback changed."""

    confirmed: list[str]
    rejected: list[str]
    examples_added: int = Field(description="Confirmed labels that did not have the text yet")
    examples_removed: int = Field(description="Rejected labels that had the text as an example")
