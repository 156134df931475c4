"""A job's page: one self-contained HTML document, with no I/O.

``GET /v1/<account>?zerocompute_job=<id>`` with ``Accept: text/html`` answers it,
and ``zerocompute timeline JOB -o job.html`` writes it: the job's summary, its
timeline as inline SVG (one lane per node, one bar per task attempt; map,
combine and reduce in their colours; failed attempts red, cancelled ones faded,
backups and retries marked), its phases and the shuffle's time, and a table of
every task with the failed ones first.  No script, stylesheet or font comes from
elsewhere, so the page renders from a file as from the proxy; while the job runs
it reloads itself every few seconds.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from zerocompute.timeline import COLOURS, FAILED_COLOUR, Bar, Timeline, timeline_of

REFRESH_S = 3
WIDTH = 1100
LABEL_W = 150
LANE_H = 22
AXIS_H = 26
PHASE_H = 18

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.status{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600}
.succeeded{background:#3a7d44}.failed{background:#c0392b}.cancelled{background:#7f8c8d}
.running{background:#2c6fbb}
table{border-collapse:collapse}td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
.tasks td,.tasks th,.phases td,.phases th{border-bottom:1px solid #e3e3e3;padding:3px 8px}
.tasks tr.bad td{background:#fdecea}.num{text-align:right;font-variant-numeric:tabular-nums}
.error{color:#c0392b}.muted{color:#777}code{font-size:12px}
.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
"""


def job_page(doc: dict[str, Any], now: float | None = None) -> str:
    """The page of a job's status document (an async job's state, or a synchronous
    job's record: ``report`` once it has ended)."""
    now = time.time() if now is None else now
    report = doc.get("report") or {}
    running = doc.get("status") == "running"
    head = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(str(doc.get('name') or doc.get('job')))} · zerocompute</title>"]
    if running:
        head.append(f'<meta http-equiv="refresh" content="{REFRESH_S}">')
    head.append(f"<style>{_STYLE}</style></head><body>")
    body = [_header(doc), _summary(doc, report, now)]
    if report.get("tasks"):
        timeline = timeline_of(report)
        body += ["<h2>Timeline</h2>", _legend(), timeline_svg(timeline)]
        body += ["<h2>Phases</h2>", _phases(report, timeline)]
        body += [f"<h2>Tasks ({len(report['tasks'])})</h2>", _tasks(report["tasks"])]
    elif running:
        body.append(f'<p class="muted">The timeline appears when the job has ended; this '
                    f"page reloads every {REFRESH_S} s.</p>")
    return "".join(head + body + ["</body></html>\n"])


def _header(doc: dict[str, Any]) -> str:
    status = str(doc.get("status", "?"))
    return (f"<h1>{escape(str(doc.get('name') or 'job'))} "
            f'<span class="status {escape(status)}">{escape(status)}</span></h1>'
            f'<div class="muted">job <code>{escape(str(doc.get("job", "")))}</code>'
            f'{" · " + escape(doc["kind"]) if doc.get("kind") else ""}</div>')


def _summary(doc: dict[str, Any], report: dict[str, Any], now: float) -> str:
    rows = [("submitted", _when(doc.get("submitted")))]
    if doc.get("status") == "running":
        rows.append(("running for", _seconds((now - float(doc.get("submitted") or now)) * 1000)))
        progress = doc.get("progress") or {}
        if progress:
            rows.append(("progress", f"{progress.get('done', 0)} of {progress.get('tasks', 0)} "
                                     f"tasks done, {progress.get('failed', 0)} failed, "
                                     f"{progress.get('retries', 0)} retries"))
    else:
        rows.append(("ended", _when(doc.get("updated"))))
    if report:
        counts, data, usage = report.get("counts", {}), report.get("bytes", {}), \
            report.get("usage", {})
        rows += [
            ("time", f"{_seconds(report.get('ms', 0))}, guests' CPU "
                     f"{_seconds(usage.get('cpu_ms', 0))}"),
            ("tasks", f"{counts.get('tasks', 0)}: {counts.get('failed', 0)} failed, "
                      f"{counts.get('retried', 0)} retried"),
            ("bytes in", human_bytes(data.get("in", 0))),
            ("bytes out", human_bytes(usage.get("bytes_written", 0))),
            ("through the proxy", human_bytes(data.get("through_proxy", 0))),
            ("scheduler", str(report.get("scheduler", ""))),
        ]
        for group, names in (report.get("counters") or {}).items():
            rows += [(f"{group}.{name}", f"{amount:,}") for name, amount in names.items()]
        for step in report.get("steps") or []:
            rows.append((f"step {report['steps'].index(step)}", str(step.get("status"))))
        if report.get("outputs"):
            shown = report["outputs"][:3]
            rows.append(("outputs", ", ".join(shown) + (
                f" and {len(report['outputs']) - 3} more" if len(report["outputs"]) > 3
                else "")))
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    problems = [("error", report.get("error")), ("cancelled", report.get("cancelled")),
                ("history", report.get("history_error"))]
    cells += "".join(f'<tr><th>{k}</th><td class="error">{escape(str(v))}</td></tr>'
                     for k, v in problems if v)
    return f"<table>{cells}</table>"


def _legend() -> str:
    items = [(COLOURS[k], k) for k in ("map", "combine", "reduce")]
    items += [(FAILED_COLOUR, "failed attempt"), ("#bbbbbb", "cancelled (faded)")]
    marks = "<span>B backup copy</span><span>R retry</span>"
    return ('<div class="legend">' + "".join(
        f'<span><i style="background:{colour}"></i>{escape(name)}</span>'
        for colour, name in items) + marks + "</div>")


def timeline_svg(timeline: Timeline) -> str:
    """The timeline as inline SVG: a ``rect`` of class ``attempt`` per task attempt
    (and of class ``combine`` over a map's combiner), each with its ``title``."""
    rows = max(1, timeline.rows)
    plot_w = WIDTH - LABEL_W - 10
    height = PHASE_H + rows * LANE_H + AXIS_H
    scale = plot_w / timeline.end_ms

    def x(ms: float) -> float:
        return LABEL_W + ms * scale
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">']
    for phase in timeline.phases:
        if phase.kind == "combine":
            continue
        out.append(f'<rect class="phase" x="{x(phase.start_ms):.1f}" y="2" '
                   f'width="{max(1.0, (phase.end_ms - phase.start_ms) * scale):.1f}" '
                   f'height="{PHASE_H - 6}" fill="{COLOURS[phase.kind]}" opacity="0.25">'
                   f"<title>{phase.kind} phase: {phase.tasks} tasks, "
                   f"{_seconds(phase.end_ms - phase.start_ms)}</title></rect>")
        out.append(f'<text x="{x(phase.start_ms) + 3:.1f}" y="{PHASE_H - 7}">'
                   f"{phase.kind}</text>")
    for number, lane in enumerate(timeline.lanes):
        y = PHASE_H + lane.first_row * LANE_H
        if number % 2 == 0:
            out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{lane.rows * LANE_H}" '
                       'fill="#f3f3f3"/>')
        out.append(f'<text x="4" y="{y + LANE_H / 2 + 4}">{escape(lane.node)}</text>')
    for bar in timeline.bars:
        out.append(_bar(bar, x, scale))
    axis_y = PHASE_H + rows * LANE_H
    out.append(f'<line x1="{LABEL_W}" y1="{axis_y}" x2="{LABEL_W + plot_w}" y2="{axis_y}" '
               'stroke="#888"/>')
    for tick in _ticks(timeline.end_ms):
        out.append(f'<line x1="{x(tick):.1f}" y1="{axis_y}" x2="{x(tick):.1f}" '
                   f'y2="{axis_y + 4}" stroke="#888"/><text x="{x(tick):.1f}" '
                   f'y="{axis_y + 16}" text-anchor="middle">{tick / 1000:g} s</text>')
    out.append("</svg>")
    return "".join(out)


def _bar(bar: Bar, x: Any, scale: float) -> str:
    y = PHASE_H + bar.row * LANE_H
    width = max(3.0 if bar.outcome == "failed" else 1.5, (bar.end_ms - bar.start_ms) * scale)
    if bar.kind == "combine":
        return (f'<rect class="combine" x="{x(bar.start_ms):.1f}" y="{y + LANE_H - 9}" '
                f'width="{width:.1f}" height="5" fill="{COLOURS["combine"]}">'
                f"<title>combiner of {escape(bar.task)}, "
                f"{_seconds(bar.end_ms - bar.start_ms)}</title></rect>")
    colour = FAILED_COLOUR if bar.outcome == "failed" else COLOURS[bar.kind]
    opacity = "0.35" if bar.outcome == "cancelled" else "0.9"
    # A white edge keeps apart two attempts that follow each other in one row.
    stroke = ' stroke="#333" stroke-dasharray="3,2"' if bar.backup else ' stroke="#fff"' \
        ' stroke-width="0.6"'

    rect = (f'<rect class="attempt {bar.kind} {bar.outcome}" x="{x(bar.start_ms):.1f}" '
            f'y="{y + 3}" width="{width:.1f}" height="{LANE_H - 6}" fill="{colour}" '
            f'opacity="{opacity}"{stroke}><title>{escape(bar.label)}</title></rect>')
    marks = "".join(m for m, on in (("B", bar.backup), ("R", bar.retry)) if on)
    if marks and width > 10:
        rect += (f'<text x="{x(bar.start_ms) + 2:.1f}" y="{y + LANE_H / 2 + 4}" '
                 f'fill="#fff" font-weight="bold">{marks}</text>')
    return rect


def _ticks(end_ms: float) -> list[float]:
    """Round times along the axis: about eight of them."""
    step = 1.0
    for candidate in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000,
                      60000, 120000, 300000, 600000, 1800000, 3600000):
        step = candidate
        if end_ms / candidate <= 8:
            break
    return [i * step for i in range(int(end_ms // step) + 1)]


def _phases(report: dict[str, Any], timeline: Timeline) -> str:
    spans = {p.kind: p for p in timeline.phases}
    rows = ["<tr><th>phase</th><th>tasks</th><th>span</th><th>guests' wall</th>"
            "<th>guests' CPU</th><th>shuffle (wall, by step)</th></tr>"]
    for kind, phase in (report.get("phases") or {}).items():
        span = spans.get(kind)
        shuffle = ", ".join(f"{step} {_seconds(spent['wall_ms'])}"
                            for step, spent in (phase.get("shuffle") or {}).items())
        rows.append(
            f"<tr><td>{escape(kind)}</td><td class=num>{phase.get('tasks', 0)}</td>"
            f"<td class=num>{_seconds(span.end_ms - span.start_ms) if span else '-'}</td>"
            f"<td class=num>{_seconds(phase['guest']['wall_ms'])}</td>"
            f"<td class=num>{_seconds(phase['guest']['cpu_ms'])}</td>"
            f"<td>{escape(shuffle) or '-'}</td></tr>")
    return f'<table class="phases">{"".join(rows)}</table>'


def _tasks(tasks: list[dict[str, Any]]) -> str:
    def bad(task: dict[str, Any]) -> bool:
        return bool(task.get("error")) or task.get("exit") not in (0, None)
    ordered = sorted(tasks, key=lambda t: not bad(t))  # stable: the failed ones first
    rows = ["<tr><th>task</th><th>kind</th><th>input</th><th>node</th><th>local</th>"
            "<th>attempts</th><th>exit</th><th>bytes in</th><th>bytes out</th>"
            "<th>time</th><th>error</th></tr>"]
    for task in ordered:
        marks = " (backup)" if task.get("backup") else ""
        rows.append(
            f'<tr class="{"bad" if bad(task) else ""}"><td><code>{escape(task["task"])}'
            f"</code></td><td>{escape(task['kind'])}</td>"
            f"<td>{escape(task.get('input') or '')}</td>"
            f"<td>{escape(task.get('node') or '-')}</td>"
            f"<td>{'yes' if task.get('local') else 'no'}</td>"
            f"<td class=num>{task.get('attempts', 0)}{marks}</td>"
            f"<td class=num>{'-' if task.get('exit') is None else task['exit']}</td>"
            f"<td class=num>{human_bytes(task.get('bytes_in', 0))}</td>"
            f"<td class=num>{human_bytes(task.get('bytes_out', 0))}</td>"
            f"<td class=num>{_seconds(task.get('wall_ms', 0))}</td>"
            f'<td class="error">{escape(task.get("error") or "")}</td></tr>')
    return f'<table class="tasks">{"".join(rows)}</table>'


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms < 100_000 else f"{ms / 60000:.1f} min"


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _when(epoch: Any) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(epoch)))
