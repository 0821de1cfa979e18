"""The run report as one self-contained HTML page (inline CSS; figures and thumbnails as PNG files beside it).

Every value from the run (class names are user folder names, paths, reasons) is
escaped with `html.escape`; image addresses are relative paths inside the report
folder, percent-encoded.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from imgpipe.report import figures as figures_lib
from imgpipe.report.data import ReportData, confused_pairs, floor_text
from trainer.features import label_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; overflow-wrap: break-word; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.decision { display: inline-block; padding: 0.2em 0.7em; border-radius: 4px; font-weight: bold; color: white; }
.blessed { background: #2a7d2a; } .rejected { background: #b03030; } .unknown { background: #777; }
.notes { background: #fff8e0; border: 1px solid #e8d48a; padding: 0.5em 1em; }
.figures img { max-width: 100%; margin: 0.5em 0.5em 0.5em 0; border: 1px solid #eee; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.8em; }
.gallery figure { margin: 0; width: 150px; font-size: 0.85em; }
.gallery figcaption { overflow-wrap: anywhere; }
.gallery img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; background: #f4f4f4; }
code { word-break: break-all; }
"""


# Bidirectional controls (a right-to-left override in a class folder's name) reorder the text
# after them: a cell's numbers would read as another class's. Shown as their code points instead
# (label_text lists a name's code points beside it already).
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute, bidirectional controls shown as [U+XXXX]."""
    text = _BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", "" if value is None else str(value))
    return html.escape(text, quote=True)


def breakable(value: Any) -> str:
    """`esc(value)` with a line break allowed after each '/', '_', '-' and '.': a file path or a
    snake_case name wraps at its parts. Table cells break only between words (a cell of text that
    may break anywhere let the table squeeze labels and numbers to a character a line: "cand /
    idate", "0.75" above "9"), so such a cell holds its path at the page's width."""
    return re.sub(r"([/_.\-])", r"\1<wbr>", esc(value))


def src(relative_path: str) -> str:
    """An <img src> for a file inside the report folder."""
    return esc(urllib.parse.quote(relative_path))


def _num(x: float | None, digits: int = 4) -> str:
    return "\u2013" if x is None else f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = ()) -> str:
    """rows hold already-escaped cell HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            cls = ' class="num"' if i < len(numeric) and numeric[i] else ""
            cells.append(f"<td{cls}>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _decision(blessed: bool | None, withdrawn: bool = False) -> str:
    if blessed is True and withdrawn:
        return '<span class="decision rejected">BLESSED, NOT PUSHED</span>'
    if blessed is True:
        return '<span class="decision blessed">BLESSED</span>'
    if blessed is False:
        return '<span class="decision rejected">NOT BLESSED</span>'
    return '<span class="decision unknown">NO DECISION</span>'


def _gate(d: ReportData) -> str:
    g = d.gate
    rows = [
        [f"candidate {esc(g.metric)}", _num(g.candidate), esc(f"this run's model on {g.judged_on}")],
    ]
    if g.compared_candidate is not None:
        rows.append(
            [
                f"candidate {esc(g.metric)}, where compared",
                _num(g.compared_candidate),
                esc(f"this run's model on {g.compared_on}"),
            ]
        )
    rows += [
        [f"baseline {esc(g.metric)}", _num(g.baseline), esc(g.baseline_note)],
        ["floor", esc(floor_text(g.floor)), esc(g.floor_note)],
    ]
    rows += [[esc(k), esc(v), ""] for k, v in g.details]
    out = [f"<p>{_decision(g.blessed, d.withdrawn)} <small>from {esc(g.source)}</small></p>"]
    if d.deployment:
        out.append(f"<p><b>{esc(d.deployment)}</b></p>")
    if g.reasons:
        out.append("<p>Why not blessed:</p><ul>" + "".join(f"<li>{esc(r)}</li>" for r in g.reasons) + "</ul>")
    out.append(_table(["", "value", "note"], rows, numeric=[False, True]))
    return "".join(out)


def _confused(d: ReportData) -> str:
    pairs = confused_pairs(d.class_names, d.confusion)
    if not pairs:
        return ""
    rows = [
        [
            esc(label_text(p.a)) + " / " + esc(label_text(p.b)),
            str(p.a_as_b),
            str(p.b_as_a),
            f"{p.right} of {p.between}"
            + (
                (" <b>(answered as each other)</b>" if p.each_other else " <b>(no better than chance)</b>")
                if p.at_chance
                else ("" if p.tested else " (too few answers to test)")
            ),
        ]
        for p in pairs
    ]
    heading = (
        "Pairs of classes told apart no better than chance, then those most often taken for each other:"
        if any(p.at_chance for p in pairs)
        else "Pairs of classes most often taken for each other:"
    )
    return f"<p>{heading}</p>" + _table(
        ["pair (a / b)", "a called b", "b called a", "right between the two"],
        rows,
        numeric=[False, True, True, False],
    )


def _numbered_axes(d: ReportData) -> bool:
    """Whether the confusion matrix's axes carry numbers, not names (too many classes)."""
    return max(len(d.rows), len(d.class_names)) > figures_lib.TICKS_MAX


def _per_class(d: ReportData) -> str:
    numbered = _numbered_axes(d)  # then each row's number on the matrix's axes comes first
    rows = [
        [
            *([str(i)] if numbered else []),
            esc(label_text(r.name)) + ("" if r.in_vocabulary else " <small>(not a model class)</small>"),
            _num(r.precision, 3),
            _num(r.recall, 3),
            str(r.support),
            str(r.predicted),
        ]
        for i, r in enumerate(d.per_class)
    ]
    acc = f"{_num(d.accuracy)} over {d.examples} labelled eval examples"
    if d.evaluator_accuracy is not None:
        acc += f" (the Evaluator measured {_num(d.evaluator_accuracy)})"
    return f"<p>Accuracy of these predictions: {esc(acc)}</p>" + _table(
        [*(["#"] if numbered else []), "class", "precision", "recall", "support", "predicted"],
        rows,
        numeric=[*([True] if numbered else []), False, True, True, True, True],
    )


LABEL_DOUBTS_SHOWN = 20  # of the label check's doubted train images, the report lists this many


def _label_check(d: ReportData) -> str:
    """The label check's numbers and its first doubted train images (file or record, labels,
    probabilities), least likely label first; "" when the Trainer made none."""
    lc = d.label_check
    if not lc or not isinstance(lc.get("agreement"), (int, float)):
        return ""
    text = (
        f"The label check: the head's answers on {lc.get('examined')} train images it did not train on "
        f"({esc(str(lc.get('held_out')))}) agree with their labels at {lc['agreement']:.3f} (the eval "
        f"split's accuracy: {_number(lc.get('eval_accuracy'))}{_of(lc)}); {lc.get('doubted')} are answered as "
        "another class as surely as that class's own images."
    )
    images = [img for img in lc.get("images") or [] if isinstance(img, dict)][:LABEL_DOUBTS_SHOWN]
    if not images:
        return f"<p>{text}</p>"
    rows = [
        [
            breakable(str(img.get("file") or f"train record {img.get('position')}")),
            esc(label_text(str(img.get("given")))),
            esc(label_text(str(img.get("answered")))),
            _number(img.get("given_probability")),
            _number(img.get("answered_probability")),
        ]
        for img in images
    ]
    shown = (
        f"the first {len(images)}, least likely label first"
        if len(images) < (lc.get("doubted") or 0)
        else "least likely label first"
    )
    return f"<p>{text} Their labels may be wrong ({shown}):</p>" + _table(
        ["image", "labelled", "answered", "p(label)", "p(answered)"],
        rows,
        numeric=[False, False, False, True, True],
    )


def _of(lc: dict) -> str:
    """Whose eval accuracy the label check compares with, when not the final model's (the
    slice's head before the refit: the page showed it beside the gate's other number unexplained)."""
    of = lc.get("eval_accuracy_of")
    return f", {esc(of)}, not the final model's" if isinstance(of, str) and of != "the final model" else ""


def _number(value: Any) -> str:
    """`_num` at 3 digits for a value read from a record (anything not a number: missing)."""
    return _num(value if isinstance(value, (int, float)) else None, 3)


def _training(d: ReportData, figures: dict[str, str]) -> str:
    if "training_curves" not in figures:
        return "<p>No training history was found for this run.</p>" + _label_check(d)
    out = [f'<div class="figures"><img src="{src(figures["training_curves"])}" alt="training curves"></div>']
    if d.training_notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in d.training_notes)
        out.append(f"<p>How the head was trained (the Trainer's notes):</p><ul>{items}</ul>")
    if d.early_stopping:
        rows = [[esc(k), esc(v)] for k, v in d.early_stopping.items() if v is not None]
        out.append("<p>How its epochs were chosen:</p>" + _table(["entry", "value"], rows))
    out.append(_label_check(d))
    return "".join(out)


def _gallery(d: ReportData) -> str:
    if not d.misclassified_total:
        return "<p>No eval image was misclassified.</p>"
    shown = len(d.misclassified)
    intro = (
        f"<p>{d.misclassified_total} misclassified eval images; the {shown} with the highest wrong score "
        f"are shown, worst first (cap {d.max_misclassified}).</p>"
        if shown
        else f"<p>{d.misclassified_total} misclassified eval images; none shown (cap 0: --max-misclassified).</p>"
    )
    items = []
    for m in d.misclassified:
        picture = (
            f'<img src="{src(m.thumbnail)}" alt="eval record {m.record}">'
            if m.thumbnail
            else "<div><small>(image could not be decoded)</small></div>"
        )
        true_score = "" if m.true_score is None else f" (true class {_num(m.true_score, 3)})"
        items.append(
            f"<figure>{picture}<figcaption>true <b>{esc(label_text(m.true))}</b><br>predicted <b>{esc(label_text(m.predicted))}</b>"
            f"<br>score {_num(m.score, 3)}{esc(true_score)}<br><small>eval record {m.record}"
            + (f"<br>{breakable(m.file)}" if m.file else "")
            + "</small>"
            "</figcaption></figure>"
        )
    return intro + f'<div class="gallery">{"".join(items)}</div>'


def render(d: ReportData, figures: dict[str, str], summary_link: str | None = None) -> str:
    """The page for `d`; `figures` maps figure names to their paths inside the report folder."""
    notes = ""
    if d.notes:
        notes = '<div class="notes"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in d.notes) + "</ul></div>"
    confusion = "".join(
        f'<img src="{src(figures[name])}" alt="{esc(alt)}">'
        for name, alt in (
            ("confusion_counts", "confusion matrix, counts"),
            ("confusion_normalised", "confusion matrix, row-normalised"),
        )
        if name in figures
    )
    artifacts = _table(
        ["artifact", "path"], [[esc(k), f"<code>{esc(v)}</code>"] for k, v in d.artifacts.items()]
    )
    numbered = (
        f" With more than {figures_lib.TICKS_MAX} classes the axes are numbered: number i is the class in row"
        " # i of the per-class table below."
        if _numbered_axes(d)
        else ""
    )
    states = ", ".join(f"{esc(k)}: {esc(v)}" for k, v in d.states.items())
    summary = f'<p><a href="{esc(summary_link)}">the run summary (JSON)</a></p>' if summary_link else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>imgpipe run {esc(d.run_id)}</title><style>{_CSS}</style></head>
<body>
<h1>imgpipe run report: {esc(d.run_id)}</h1>
{notes}
<h2 id="gate">Gate decision</h2>
{_gate(d)}
<h2 id="confusion">Confusion matrix</h2>
<p>Rows: true class; columns: the model's top class. {d.examples} labelled eval examples.{numbered}</p>
<div class="figures">{confusion}</div>
<h2 id="per-class">Per class</h2>
{_per_class(d)}
{_confused(d)}
<h2 id="training">Training</h2>
{_training(d, figures)}
<h2 id="misclassified">Misclassified eval images</h2>
{_gallery(d)}
<h2 id="run">Run</h2>
<p>Components: {states}</p>
{artifacts}
{summary}
</body>
</html>
"""
