"""Errors with a stable code and an HTTP status, shared by every layer."""

from __future__ import annotations


class LabelrankError(Exception):
    """Base error: `code` is stable for clients, `status` is the HTTP answer."""

    code = "labelrank_error"
    status = 500

    def __init__(self, message: str, **detail: object) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def to_dict(self) -> dict[str, object]:
        """Render as the JSON error body used by the API, the CLI and batch output."""
        return {"code": self.code, "message": self.message, **self.detail}


class InvalidTextError(LabelrankError):
    """Raised when a text is empty or has no printable character."""

    code = "invalid_text"
    status = 422


class TextTooLongError(InvalidTextError):
    """Raised when a text is longer than the configured limit."""

    code = "text_too_long"
    status = 413


class CatalogError(LabelrankError):
    """Raised when a catalog or examples file has a line that cannot be a label."""

    code = "invalid_catalog"
    status = 422


class UnknownLabelError(LabelrankError):
    """Raised when a label id is not in the index."""

    code = "unknown_label"
    status = 404


class IndexMismatchError(LabelrankError):
    """Raised when an index is opened with another embedder than built it."""

    code = "embedder_mismatch"
    status = 409


class EmptyIndexError(LabelrankError):
    """Raised when an index with no vectors is searched."""

    code = "empty_index"
    status = 409


class MissingExtraError(LabelrankError):
    """Raised when a command needs an optional dependency group that is not installed."""

    code = "missing_extra"
    status = 501


def require_extra(module: str, extra: str) -> None:
    """Fail with one clear line naming the extra to install when `module` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(f"this command needs the {module!r} package: "
                                f"pip install 'labelrank[{extra}]'", module=module, extra=extra)
