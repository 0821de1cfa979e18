"""The run report's PNG figures: confusion matrices, training curves, thumbnails.

matplotlib draws through its Agg canvas on Figure objects (no pyplot, no global
state, no display needed); each function writes one file.
"""

from __future__ import annotations

import collections
import math
import unicodedata
import warnings
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from trainer.class_names import is_plain
from trainer.features import DEFAULT_MAX_PIXELS

DPI = 100
THUMBNAIL_PX = 96
_LABEL_CHARS = 18  # class names are cut to this many characters on axes (the page shows them whole)
_ANNOTATE_MAX = 25  # above this many classes the cells carry no numbers
TICKS_MAX = 60  # above this many classes the axes carry no class names


def _short(name: str) -> str:
    """The name cut to _LABEL_CHARS; one not in Unicode's composed form (NFC), or holding a hidden
    character (a space at an end, a zero-width or no-break space), is marked, so two labels that
    print alike (the page gives their code points) are told apart on the axes."""
    mark = _mark(name)
    room = _LABEL_CHARS - len(mark)
    return (name if len(name) <= room else name[: room - 1] + "\u2026") + mark


def _mark(name: str) -> str:
    if not unicodedata.is_normalized("NFC", name):
        return " (not NFC)"
    return " (hidden chars)" if not is_plain(name) else ""


def _axis_labels(names: Sequence[str]) -> list[str]:
    """Each name as `_short` cuts it; names whose cut forms are alike (a long common start) keep
    their ends instead ("class_of_images_…_2021", "…_2022"), and any still alike are numbered,
    so no two ticks of an axis read the same."""
    labels = [_short(n) for n in names]
    counts = collections.Counter(labels)
    labels = [_ends(n) if counts[label] > 1 else label for n, label in zip(names, labels, strict=True)]
    counts = collections.Counter(labels)
    return [f"{label} #{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]


def _ends(name: str) -> str:
    """The name's start and end around an ellipsis, within _LABEL_CHARS, marked as `_short` marks."""
    mark = _mark(name)
    room = _LABEL_CHARS - len(mark)
    if len(name) <= room:
        return name + mark
    tail = room // 2
    return name[: room - tail - 1] + "\u2026" + name[-tail:] + mark


def _save(fig: Figure, path: str) -> None:
    FigureCanvasAgg(fig)
    with warnings.catch_warnings():
        # A class name in a script or emoji the font lacks is drawn as boxes; the table beside the
        # figure has its name. Matplotlib's warning per glyph would be noise on the run's stderr.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
        fig.savefig(path, dpi=DPI, format="png")


def confusion_matrix(
    rows: Sequence[str], columns: Sequence[str], matrix: Sequence[Sequence[int]], path: str, normalised: bool
) -> None:
    """Rows: true class, columns: predicted class; counts, or each row divided by its total."""
    n_rows, n_cols = len(rows), len(columns)
    values = [
        [(v / sum(row) if sum(row) else 0.0) for v in row] if normalised else [float(v) for v in row]
        for row in matrix
    ]
    side = min(16.0, max(4.5, 0.45 * max(n_rows, n_cols) + 2.5))
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = fig.add_subplot()
    top = 1.0 if normalised else max((max(r) for r in values if r), default=1.0) or 1.0
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=top, aspect="auto")
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class" if normalised else "examples")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix, row-normalised" if normalised else "Confusion matrix, counts")
    if max(n_rows, n_cols) <= TICKS_MAX:
        # parse_math=False: a class name is text; '$...$' in one would be read as mathtext.
        ax.set_xticks(range(n_cols), _axis_labels(columns), rotation=45, ha="right", parse_math=False)
        ax.set_yticks(range(n_rows), _axis_labels(rows), parse_math=False)
    if max(n_rows, n_cols) <= _ANNOTATE_MAX:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                v = values[i][j]
                text = (f"{v:.2f}" if count else "0") if normalised else str(count)
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > top / 2 else "black",
                )
    _save(fig, path)


VALIDATION_LABEL = "validation (held out of train)"
REFIT_LABEL = "refit on all of train (the model kept)"


def validation_label(folds: int | None) -> str:
    """What the val_* curves are: the validation slice held out of train, or with cross-validation
    every fold's held-out part pooled (trainer/head.py), never the eval split that gates."""
    return f"cross-validation ({folds} folds, held-out parts pooled)" if folds else VALIDATION_LABEL


def _phase_series(
    history: dict[str, list[float]], metric: str, folds: int | None = None
) -> dict[str, list[float]]:
    """label -> values per epoch from 1 (NaN: no point at that epoch). Fine-tuning continues the
    model kept: the refit on the whole train split when there is one (refit_*: the head trained
    again for the chosen epochs), else the early-stopping run."""
    refit = history.get(f"refit_{metric}", [])
    fine, fine_val = history.get(f"fine_tune_{metric}", []), history.get(f"fine_tune_val_{metric}", [])
    if not refit:
        return {
            "train": history.get(metric, []) + fine,
            validation_label(folds): history.get(f"val_{metric}", []) + fine_val,
            REFIT_LABEL: [],
        }
    out = {
        "train": history.get(metric, []),
        validation_label(folds): history.get(f"val_{metric}", []),
        REFIT_LABEL: refit + fine,
    }
    if fine_val:
        out[f"{validation_label(folds)}, fine-tune"] = [math.nan] * len(refit) + fine_val
    return out


def _fine_tune_start(history: dict[str, list[float]]) -> int:
    """The epoch after which fine-tuning is drawn: the refit's last, else the head run's."""
    refit = max((len(v) for k, v in history.items() if k.startswith("refit_")), default=0)
    if refit:
        return refit
    return max(len(history.get(k, [])) for k in ("loss", "accuracy", "val_loss", "val_accuracy"))


def has_curves(history: dict[str, list[float]]) -> bool:
    return any(history.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy"))


def training_curves(history: dict[str, list[float]], path: str, folds: int | None = None) -> None:
    """Loss and accuracy per epoch, on train and on the validation slice held out of it (early
    stopping's, not the eval split) or, with `folds`, cross-validation's pooled held-out parts;
    the refit on the whole train split dashed; the fine-tune phase shaded when present."""
    head_epochs = _fine_tune_start(history)
    fine_tune_epochs = max(
        (len(v) for k, v in history.items() if k.startswith("fine_tune_")),
        default=0,
    )
    fig = Figure(figsize=(11, 4), layout="constrained")
    for i, (metric, title) in enumerate((("loss", "Loss"), ("accuracy", "Accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, series in _phase_series(history, metric, folds).items():
            if series:
                epochs = range(1, len(series) + 1)
                style = "--" if split == REFIT_LABEL else "-"
                ax.plot(epochs, series, style, marker="o", markersize=3, label=split)
        if fine_tune_epochs:
            ax.axvspan(head_epochs + 0.5, head_epochs + fine_tune_epochs + 0.5, color="orange", alpha=0.12)
            ax.axvline(
                head_epochs + 0.5, color="orange", linestyle="--", linewidth=1, label="fine-tune starts"
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def thumbnail(
    image: bytes, path: str, size: int = THUMBNAIL_PX, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    """A PNG of `image` as the model sees it, fitted in size x size (small images are enlarged
    without smoothing).

    The pixels are the pipeline's own decode (trainer.preprocessing.decode_image: EXIF
    orientation applied, 16-bit and greyscale scaled to RGB uint8, a GIF's first frame, a JPEG
    at the smallest DCT scale that still covers `size`), not Pillow's: Pillow's convert("RGB")
    ignores the orientation and clips 16-bit greyscale to near white. An image the decoder
    refuses (over `max_pixels`, not JPEG/PNG/GIF/BMP, damaged) raises tf.errors.OpError.
    """
    from trainer.preprocessing import traced_decoder  # here: only a report with thumbnails loads TF

    rgb = Image.fromarray(traced_decoder(size, max_pixels)(image).numpy(), "RGB")
    scale = size / max(rgb.size)
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    target = (max(1, math.floor(rgb.width * scale)), max(1, math.floor(rgb.height * scale)))
    ImageOps.contain(rgb, target, method=resample).save(path, format="PNG")
