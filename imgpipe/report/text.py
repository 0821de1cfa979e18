"""The run report as plain text for a terminal: gate decision, per-class table, worst misclassifications."""

from __future__ import annotations

import unicodedata

from imgpipe.report.data import ReportData, confused_pairs, floor_text
from trainer.features import label_text

TEXT_MISCLASSIFIED = 10  # the text view lists this many of the worst misclassifications


def _clean(value: object) -> str:
    """A class name or path with control characters escaped (they are user folder names)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render(d: ReportData, path: str | None = None, limit: int = TEXT_MISCLASSIFIED) -> str:
    g = d.gate
    decision = {True: "BLESSED", False: "NOT BLESSED"}.get(g.blessed, "NO DECISION")
    if g.blessed and d.withdrawn:
        decision = "BLESSED, NOT PUSHED"
    label = len("candidate " + g.metric + (", where compared" if g.compared_candidate is not None else ""))
    lines = [f"run {_clean(d.run_id)}"]
    if path:
        lines.append(f"report {_clean(path)}")
    lines += [f"note: {_clean(n)}" for n in d.notes]
    lines += [
        "",
        f"gate: {decision}  ({_clean(g.source)})",
    ]
    if d.deployment:
        lines.append(f"  {_clean(d.deployment)}")
    lines += [f"  not blessed because: {_clean(r)}" for r in g.reasons]
    lines += [
        f"  {'candidate ' + g.metric:<{label}} {_num(g.candidate)}",
    ]
    if g.compared_candidate is not None:
        lines.append(
            f"  {'candidate ' + g.metric + ', where compared':<{label}} {_num(g.compared_candidate)}  "
            f"on {_clean(g.compared_on)}"
        )
    lines += [
        f"  {'baseline ' + g.metric:<{label}} {_num(g.baseline)}  {_clean(g.baseline_note)}",
        f"  {'floor':<{label}} {floor_text(g.floor)}  {_clean(g.floor_note)}",
    ]
    lines += [f"  {_clean(k)}: {_clean(v)}" for k, v in g.details]

    names = [
        _clean(label_text(r.name)) + ("" if r.in_vocabulary else " (not a model class)") for r in d.per_class
    ]
    width = max([len("class"), *map(_columns, names)])
    lines += [
        "",
        f"accuracy {_num(d.accuracy)} over {d.examples} labelled eval examples"
        + (f" (Evaluator: {_num(d.evaluator_accuracy)})" if d.evaluator_accuracy is not None else ""),
        f"{'class':<{width}}  precision  recall  support  predicted",
    ]
    for name, r in zip(names, d.per_class, strict=True):
        lines.append(
            f"{name}{' ' * (width - _columns(name))}  {_num(r.precision, 3):>9}  {_num(r.recall, 3):>6}  {r.support:>7}  {r.predicted:>9}"
        )

    pairs = confused_pairs(d.class_names, d.confusion)
    if pairs:
        heading = "most often taken for each other:"
        if any(p.at_chance for p in pairs):
            heading = "told apart no better than chance, then " + heading
        lines += ["", heading]
        lines += [
            f"  {_clean(label_text(p.a))} / {_clean(label_text(p.b))}: {p.a_as_b} + {p.b_as_a} mistakes, "
            f"{p.right} of {p.between} right between the two"
            + (
                (" (answered as each other)" if p.each_other else " (no better than chance)")
                if p.at_chance
                else ("" if p.tested else " (too few answers to test)")
            )
            for p in pairs
        ]
    if d.training_notes:
        lines += ["", "training:"] + [f"  {_clean(n)}" for n in d.training_notes]
    lines.append("")
    if not d.misclassified_total:
        lines.append("no misclassified eval images")
    else:
        shown = d.misclassified[:limit]
        lines.append(f"{d.misclassified_total} misclassified eval images; worst {len(shown)}:")
        for m in shown:
            lines.append(
                f"  record {m.record:>5}  true {_clean(label_text(m.true))}  predicted {_clean(label_text(m.predicted))}  score {m.score:.3f}"
                + (f"  {_clean(m.file)}" if m.file else "")
            )
    return "\n".join(lines) + "\n"


def _columns(text: str) -> int:
    """The terminal columns `text` takes: 2 for a wide East Asian character, 0 for a combining mark."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
        for c in text
    )
