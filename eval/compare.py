"""`labelrank compare`: metric deltas between two runs and the texts whose outcome changed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flip:
    """A text that gained or lost correct labels (or wrong ones) between run A and run B."""

    id: str
    text: str
    gold: list[str]
    a: list[str]
    b: list[str]
    gained: list[str]
    lost: list[str]


def metric_deltas(run_a: dict, run_b: dict) -> list[tuple[str, float, float, float]]:
    """(metric, A, B, B - A) for every numeric metric the two runs share."""
    a, b = run_a["metrics"], run_b["metrics"]
    return [(name, float(a[name]), float(b[name]), float(b[name]) - float(a[name]))
            for name in a if name in b and isinstance(a[name], int | float)]


def flips(run_a: dict, run_b: dict) -> list[Flip]:
    """Texts (matched by id) whose set of correct predicted labels, or of wrong ones, changed."""
    b_rows = {row["id"]: row for row in run_b["predictions"]}
    changed = []
    for row_a in run_a["predictions"]:
        row_b = b_rows.get(row_a["id"])
        if row_b is None:
            continue
        gold = set(row_a["gold"])
        pred_a, pred_b = set(row_a.get("labels", [])), set(row_b.get("labels", []))
        if pred_a == pred_b:
            continue
        gained = sorted((pred_b - pred_a) & gold) + sorted(
            f"-{wrong}" for wrong in (pred_a - pred_b) - gold)
        lost = sorted((pred_a - pred_b) & gold) + sorted(
            f"+{wrong}" for wrong in (pred_b - pred_a) - gold)
        changed.append(Flip(row_a["id"], row_a["text"], sorted(gold), sorted(pred_a),
                            sorted(pred_b), gained, lost))
    return changed


def differing_settings(run_a: dict, run_b: dict) -> list[tuple[str, object, object]]:
    """(setting, A, B) for every setting that differs, the prompt file included."""
    a, b = run_a["settings"], run_b["settings"]
    found: list[tuple[str, object, object]] = [(key, a.get(key), b.get(key))
                                               for key in sorted(set(a) | set(b))
                                               if a.get(key) != b.get(key)]
    if (run_a.get("prompt") or {}).get("sha256") != (run_b.get("prompt") or {}).get("sha256"):
        found.append(("prompt", _prompt(run_a), _prompt(run_b)))
    return found


def render_comparison(run_a: dict, run_b: dict, name_a: str, name_b: str,
                      max_flips: int = 20) -> str:
    """A plain-text report: settings that differ, metric deltas, then the flipped texts."""
    lines = [f"A: {name_a}", f"B: {name_b}", ""]
    for key, a, b in differing_settings(run_a, run_b):
        lines.append(f"  prompt: {a} -> {b}" if key == "prompt"
                     else f"  setting {key}: {a!r} -> {b!r}")
    lines += ["", f"{'metric':<24}{'A':>9}{'B':>9}{'B-A':>9}"]
    for name, a, b, delta in metric_deltas(run_a, run_b):
        lines.append(f"{name:<24}{a:>9.4f}{b:>9.4f}{delta:>+9.4f}")
    changed = flips(run_a, run_b)
    better = [f for f in changed if f.gained and not f.lost]
    worse = [f for f in changed if f.lost and not f.gained]
    lines += ["", f"texts changed: {len(changed)} (better {len(better)}, worse {len(worse)}, "
              f"mixed {len(changed) - len(better) - len(worse)})"]
    for flip in (better[: max_flips // 2] + worse[: max_flips // 2]):
        lines.append(f"  [{flip.id}] {flip.text[:90]!r}")
        lines.append(f"      gold {flip.gold}  A {flip.a}  B {flip.b}")
    return "\n".join(lines)


def _prompt(run: dict) -> str:
    prompt = run.get("prompt")
    return f"{prompt['task']}@{prompt['version']} ({prompt['sha256'][:8]})" if prompt else "none"
