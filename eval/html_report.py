"""`labelrank report --out X.html`: the console's run views as one self-contained HTML file."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from eval.console_runs import TEMPLATES
from eval.run_views import chart, compare_view, run_view
from service.console.templating import STATIC, render


def html_report(runs: list[tuple[str, dict]]) -> str:
    """One page: the comparison of the first two runs (when there are two), then each run.
    Styles and chart data are inline; there is no script and nothing to fetch."""
    compare = compare_view(*runs[0], *runs[1]) if len(runs) >= 2 else None
    views = [run_view(name, run) for name, run in runs]
    title = " vs ".join(name for name, _ in runs[:2]) + (
        f" (+{len(runs) - 2} more)" if len(runs) > 2 else "")
    return render("report.html", (TEMPLATES,), title=title, standalone=True,
                  css=(STATIC / "console.css").read_text(encoding="utf-8"),
                  written=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  compare=compare, compare_chart=chart(compare["curves"]) if compare else None,
                  runs=[{"view": view, "chart": chart([view["curve"]])} for view in views])


def write_html_report(runs: list[tuple[str, dict]], out: Path) -> Path:
    """Write the report to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_report(runs), encoding="utf-8")
    return out
