"""A job's timeline as a picture (PNG, SVG, PDF), drawn with matplotlib.

The same layout as the job page (:mod:`zerocompute.timeline`): one lane per node,
one bar per task attempt, map, combine and reduce in their colours, failed
attempts red, cancelled ones faded, backups hatched, retries outlined.
matplotlib is an optional extra (``pip install 'zerocompute[plot]'``); it is
imported only here.
"""

from __future__ import annotations

from typing import Any

from zerocompute.timeline import COLOURS, FAILED_COLOUR, timeline_of

MISSING = ("drawing a timeline needs matplotlib: pip install matplotlib "
           "(or zerocompute[plot])")


def draw_timeline(report: dict[str, Any], path: str, title: str | None = None) -> str:
    """Draw the timeline of a job report (``JobReport.to_dict``) into ``path``; the
    picture's format follows its suffix.  Returns ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display: a file, from a shell or a notebook alike
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise RuntimeError(MISSING) from None
    timeline = timeline_of(report)
    if not timeline.bars:
        raise ValueError("the report has no task attempts to draw (has the job ended?)")
    rows = timeline.rows
    figure, axes = plt.subplots(figsize=(11, 1.6 + 0.3 * rows))
    try:
        for bar in timeline.bars:
            # A failed try of a few milliseconds still shows.
            least = timeline.end_ms / 1000 / (250 if bar.outcome == "failed" else 800)
            start, width = bar.start_ms / 1000, max((bar.end_ms - bar.start_ms) / 1000, least)
            if bar.kind == "combine":
                axes.broken_barh([(start, width)], (bar.row + 0.12, 0.18),
                                 facecolors=COLOURS["combine"])
                continue
            axes.broken_barh(
                [(start, width)], (bar.row - 0.35, 0.7),
                facecolors=FAILED_COLOUR if bar.outcome == "failed" else COLOURS[bar.kind],
                alpha=0.35 if bar.outcome == "cancelled" else 0.9,
                hatch="//" if bar.backup else None,
                edgecolor="black" if bar.retry or bar.backup else "white",
                linewidth=0.8)
        top = axes.get_xaxis_transform()  # x in seconds, y in the axes' height
        for phase in timeline.phases:
            if phase.kind != "combine":
                axes.axvline(phase.start_ms / 1000, color=COLOURS[phase.kind], linewidth=0.8,
                             linestyle="--")
                axes.text(phase.start_ms / 1000, 1.01, f" {phase.kind}", transform=top,
                          color=COLOURS[phase.kind], fontsize=8, va="bottom")
        axes.set_yticks([lane.first_row + (lane.rows - 1) / 2 for lane in timeline.lanes],
                        [lane.node for lane in timeline.lanes])
        for lane in timeline.lanes[1:]:
            axes.axhline(lane.first_row - 0.5, color="#cccccc", linewidth=0.6)
        axes.set_ylim(-0.6, rows - 0.4)
        axes.invert_yaxis()
        axes.set_xlim(0, timeline.end_ms / 1000 * 1.01)
        axes.set_xlabel("seconds from the job's start")
        axes.grid(axis="x", alpha=0.3)
        axes.set_title(title or f"{report.get('job', 'job')}: {report.get('status', '')}, "
                                f"{len(timeline.attempts)} attempts on "
                                f"{len(timeline.lanes)} nodes", pad=14)
        legend = [Patch(color=COLOURS[k], label=k) for k in ("map", "combine", "reduce")]
        legend += [Patch(color=FAILED_COLOUR, label="failed attempt"),
                   Patch(facecolor="white", edgecolor="black", hatch="//", label="backup copy")]
        axes.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.18 - 0.5 / rows),
                    ncol=len(legend), frameon=False, fontsize=8)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return path
