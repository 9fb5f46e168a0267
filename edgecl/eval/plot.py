"""`edgecl eval --plot`: accuracy on all classes seen so far after each session, one line per method."""

from __future__ import annotations

from pathlib import Path

from edgecl.errors import EdgeclError, param


def require_matplotlib(path: Path | None = None):
    """pyplot on the Agg backend; a user error naming the remedy when it is not installed or
    `path` cannot be written."""
    if path is not None and not Path(path).parent.is_dir():
        raise EdgeclError(f"{param('plot')} {path}: folder {Path(path).parent} does not exist")
    try:
        import matplotlib
    except ImportError:
        raise EdgeclError(
            f"{param('plot')} needs matplotlib: install edgecl with its plot extra, or pip install matplotlib"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot_sessions(report, path: Path) -> Path:
    plt = require_matplotlib(path)
    p = report.protocol
    sizes = [p["init"] + p["increment"] * t for t in range(p["sessions"])]
    seen = [min(s, p["classes"]) for s in sizes]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for result in report.results:
        axes.plot(seen, result.accuracy_per_session, marker="o", label=f"{result.method} (A_last {result.A_last:.3f})")
    for name, value in report.joint.items():
        axes.axhline(value, linestyle="--", linewidth=1, color="grey")
        axes.annotate(f"joint {name} {value:.3f}", (seen[0], value), fontsize=8, color="grey", va="bottom")
    axes.set_xlabel("classes seen")
    axes.set_ylabel("accuracy on all classes seen")
    axes.set_title(f"B{p['init']} Inc{p['increment']}, {p['classes']} classes, {p['backbone']}, seed {p['seed']}")
    axes.set_xticks(seen)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def confusion_rows(report) -> tuple[list[str], list[str], list[list[int]]]:
    """Rows, columns and counts with right answers on the diagonal: the folder classes the bundle knows, in
    its order, as the first rows and columns; then the folder classes it does not know (rows), and its classes
    without a folder and "unknown" (columns)."""
    by_name = dict(zip(report.per_class, report.confusion))
    known = [c for c in report.labels if c in by_name]
    rows = known + [c for c in by_name if c not in report.labels]
    columns = known + [c for c in report.labels if c not in by_name]
    order = [report.labels.index(c) for c in columns]
    return rows, columns, [[by_name[r][j] for j in order] for r in rows]


def plot_confusion(report, path: Path) -> Path:
    """`edgecl val --plot`: the confusion counts, rows the folder's classes, columns the labels given."""
    plt = require_matplotlib(path)
    rows, columns, counts = confusion_rows(report)
    size = max(4.0, 0.35 * max(len(rows), len(columns)) + 2)
    figure, axes = plt.subplots(figsize=(size, size * len(rows) / max(len(columns), 1) + 1))
    shares = [[c / max(sum(row), 1) for c in row] for row in counts]
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(rows)), rows, fontsize=7)
    if len(rows) * len(columns) <= 400:
        for i, row in enumerate(counts):
            for j, count in enumerate(row):
                if count:
                    axes.text(j, i, str(count), ha="center", va="center", fontsize=6)
    axes.set_xlabel("predicted")
    axes.set_ylabel("folder")
    axes.set_title(f"accuracy {report.accuracy:.3f}, unknown under {report.min_score:.2f}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
