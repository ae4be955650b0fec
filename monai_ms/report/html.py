"""One self-contained HTML page for an evaluation or inference run folder (images inlined as base64).

What the page shows, from the files the run wrote (whatever of them exist):

- the metrics table of ``metrics.json``: the model (``model`` or ``summary``) and every ``baselines``
  entry, one column per scalar metric, with its 95% interval where the report has one (a ``ci95``
  mapping ``{metric: [low, high]}``, or ``<metric>_ci95`` / ``<metric>_ci95_low`` + ``_ci95_high`` keys);
- the plots: every ``*.png`` directly in the folder (learning curve, scatter, ROC, volumes, ...);
- one row per session from the run's session table (``lesions.csv`` of a lesion inference,
  ``per_scan.csv`` of a lesion evaluation, else ``predictions.csv``), with its QC overlay
  ``qc/<session>_qc.png`` (or ``inference/qc/...`` next to an evaluation) when there is one (a click
  enlarges it); rows with a non-empty ``error`` (or ``status`` failed) are
  highlighted and listed first; a click on a column header sorts by it (a few lines of inline JS).

Nothing is fetched at view time (no CDN, no external file), so the page can be mailed or archived.

Examples:
    >>> path = write_report("bundles/lesion_seg/eval/inference")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'report.html'
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_ms.errors import UserError

__all__ = ["ReportError", "SESSION_TABLES", "build_report", "metrics_rows", "write_report"]

# the per-session table of a run folder, first match wins
SESSION_TABLES = ("lesions.csv", "per_scan.csv", "predictions.csv")
REPORT_FILE = "report.html"


class ReportError(UserError, ValueError):
    """The folder is not a run folder the report can read (the message names the file and the rule)."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(values: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    """The 95% interval of ``key`` in a metrics section, from whichever key style the report uses."""
    candidates = [
        (values.get("ci95") or {}).get(key) if isinstance(values.get("ci95"), Mapping) else None,
        values.get(f"{key}_ci95"),
        [values.get(f"{key}_ci95_low"), values.get(f"{key}_ci95_high")],
    ]
    for pair in candidates:
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and all(_finite(v) for v in pair):
            return float(pair[0]), float(pair[1])
    return None


def metrics_rows(report: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, dict[str, tuple[Any, tuple[float, float] | None]]]]]:
    """The metrics table of a ``metrics.json``: column names and ``(row label, {metric: (value, interval)})``.

    Examples:
        >>> columns, rows = metrics_rows({"model": {"n": 9, "mae": 1.2, "ci95": {"mae": [1.0, 1.4]}}})
        >>> columns, rows[0]
        (['n', 'mae'], ('model', {'n': (9, None), 'mae': (1.2, (1.0, 1.4))}))
    """
    sections: list[tuple[str, Mapping[str, Any]]] = []
    model = report.get("model") if isinstance(report.get("model"), Mapping) else report.get("summary")
    if isinstance(model, Mapping):
        sections.append(("model", model))
    baselines = report.get("baselines")
    if isinstance(baselines, Mapping):
        sections += [(f"baseline: {name}", values) for name, values in baselines.items() if isinstance(values, Mapping)]
    columns: list[str] = []
    rows = []
    for label, values in sections:
        cells = {}
        for key, value in values.items():
            if key.endswith(("_ci95", "_ci95_low", "_ci95_high")) or isinstance(value, (Mapping, list, str, bool)):
                continue
            if value is None or _finite(value):
                cells[key] = (value, _interval(values, key))
                if key not in columns:
                    columns.append(key)
        rows.append((label, cells))
    return columns, rows


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3f}"
        return f"{value:.3g}"
    return str(value)


def _image_tag(path: Path, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metrics_html(report: Mapping[str, Any]) -> str:
    """One row per metric, one column for the model and each baseline (reports have many metrics, few rows)."""
    columns, rows = metrics_rows(report)
    if not rows:
        return "<p>metrics.json has no model or baseline metrics.</p>"
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in rows)
    body = []
    for column in columns:
        tds = []
        for _, cells in rows:
            value, interval = cells.get(column, ("", None))
            text = _number(value) if value != "" else ""
            if interval is not None:
                text += f' <span class="ci">[{_number(interval[0])}, {_number(interval[1])}]</span>'
            tds.append(f"<td>{text}</td>")
        body.append(f"<tr><th>{html.escape(column)}</th>{''.join(tds)}</tr>")
    has_ci = any(i is not None for _, cells in rows for _, i in cells.values())
    uncertainty = report.get("uncertainty") if isinstance(report.get("uncertainty"), Mapping) else {}
    method = f" ({html.escape(str(uncertainty['method']))})" if uncertainty.get("method") else ""
    note = (f"<p class=note>[low, high]: 95% interval as written in metrics.json{method}.</p>" if has_ci
            else "<p class=note>metrics.json gives no intervals for these metrics.</p>")
    return f"<table class=metrics><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _session_table(run_dir: Path) -> tuple[Path | None, Any]:
    import pandas as pd

    for name in SESSION_TABLES:
        path = run_dir / name
        if path.is_file():
            try:
                frame = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
                raise ReportError(f"{path}: not a readable CSV table ({error})") from error
            if "session" not in frame.columns:
                raise ReportError(f"{path}: the session table must have a 'session' column, got {list(frame.columns)}")
            return path, frame
    return None, None


def _is_error(row: Mapping[str, Any]) -> bool:
    error = row.get("error")
    if isinstance(error, str) and error.strip():
        return True
    status = row.get("status")
    return isinstance(status, str) and status.strip().lower() in ("failed", "error")


def _qc_file(run_dir: Path, session: str) -> Path:
    """``qc/<session>_qc.png`` of the run, or of the inference run in its ``inference/`` sub-folder."""
    for folder in (run_dir / "qc", run_dir / "inference" / "qc"):
        if (folder / f"{session}_qc.png").is_file():
            return folder / f"{session}_qc.png"
    return run_dir / "qc" / f"{session}_qc.png"


def _sessions_html(run_dir: Path, table: Path, frame: Any) -> tuple[str, int, int]:
    # show the count/volume/prediction columns first, then the rest; file paths are left out
    hidden = {"subject", "model_version"}
    columns = [c for c in frame.columns if c != "session" and c not in hidden and not str(c).endswith(("_file", "_path", "file", "path"))]
    first = ("error", "status", "lesion_count", "n_lesions", "total_volume_ml", "lesion_volume_ml", "volume_ml")
    preferred = [c for c in first if c in columns]
    columns = preferred + [c for c in columns if c not in preferred]
    records = frame.to_dict(orient="records")
    records.sort(key=lambda r: not _is_error(r))  # failures first
    head = "<th>session</th><th>QC overlay</th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body, errors, pictures = [], 0, 0
    for row in records:
        session = str(row["session"])
        qc = _qc_file(run_dir, session)
        picture = _image_tag(qc, f"QC overlay of {session}", "qc") if qc.is_file() else "<span class=none>none</span>"
        pictures += qc.is_file()
        cells = []
        for column in columns:
            value = row.get(column)
            missing = value is None or (isinstance(value, float) and math.isnan(value))
            text = "" if missing else _number(value) if isinstance(value, (int, float)) else html.escape(str(value))
            sort = "" if missing or not isinstance(value, (int, float)) else f' data-sort="{float(value)!r}"'
            cells.append(f"<td{sort}>{text}</td>")
        failed = _is_error(row)
        errors += failed
        cls = ' class="error"' if failed else ""
        body.append(f"<tr{cls}><td>{html.escape(session)}</td><td>{picture}</td>{''.join(cells)}</tr>")
    rows_html = "".join(body)
    caption = (
        f"{len(records)} sessions from {html.escape(table.name)}"
        + (f", <b>{errors} with errors</b> (highlighted, listed first)" if errors else "")
        + "; click a column header to sort."
    )
    table_html = f"<table id=sessions class=sortable><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"
    return f"<p>{caption}</p>{table_html}", errors, pictures


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;vertical-align:middle}
thead th{background:#f0f0f0;cursor:pointer;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
.ci{color:#666;font-size:.85em}.note{color:#555;font-size:.85em}
tr.error td{background:#fde2e2}tr.error td:first-child{border-left:4px solid #c62828}
img.qc{height:150px;cursor:zoom-in}img.qc.big{height:auto;max-width:900px;cursor:zoom-out}img.plot{max-height:300px;max-width:48%;margin:.3em;border:1px solid #ddd;vertical-align:top}.none{color:#999}
"""  # noqa: E501 (one CSS rule per line)

# click a header: sort the rows by that column (numbers by data-sort, else text); click again: reverse
_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('thead th').forEach(function(th, index){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[index], y = b.cells[index];
        var nx = x.dataset.sort, ny = y.dataset.sort;
        if (nx !== undefined && ny !== undefined) return dir * (parseFloat(nx) - parseFloat(ny));
        if (nx !== undefined) return -1; if (ny !== undefined) return 1;
        return dir * x.textContent.localeCompare(y.textContent);
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('img.qc').forEach(function(img){
  img.addEventListener('click', function(){ img.classList.toggle('big'); });
});
"""


def build_report(run_dir: str | os.PathLike, title: str | None = None, command: str | None = None) -> str:
    """The HTML page of a run folder (see the module docstring for what it shows).

    Args:
        run_dir: an evaluation folder (``metrics.json``, plots, ``per_scan.csv`` / ``predictions.csv``) or an
            inference folder (``lesions.csv`` or ``predictions.csv``, ``qc/``).
        title: the page title (default: the folder's path).
        command: the command that produced the page, shown under the title.

    Returns:
        the page, one self-contained HTML document.

    Raises:
        ReportError: no such folder, or it has none of ``metrics.json``, a session table and a PNG; an
            unreadable ``metrics.json`` or session table.

    Examples:
        >>> page = build_report("bundles/sex/eval")  # doctest: +SKIP
        >>> page.startswith("<!DOCTYPE html>")  # doctest: +SKIP
        True
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder")
    metrics_file = run_dir / "metrics.json"
    report = None
    if metrics_file.is_file():
        try:
            report = json.loads(metrics_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ReportError(f"{metrics_file}: not valid JSON ({error})") from error
        if not isinstance(report, Mapping):
            raise ReportError(f"{metrics_file}: must be a JSON object, got {type(report).__name__}")
    table, frame = _session_table(run_dir)
    plots = sorted(p for p in run_dir.glob("*.png") if p.is_file())
    if report is None and table is None and not plots:
        raise ReportError(
            f"{run_dir}: not a run folder: none of metrics.json, {', '.join(SESSION_TABLES)} or a *.png "
            "(give the folder an evaluation or inference run wrote, e.g. bundles/lesion_seg/eval/inference)"
        )
    from monai_ms import __version__

    title = title or str(run_dir)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p class=note>Generated {stamp} by monai_ms {__version__}"
             + (f" with <code>{html.escape(command)}</code>" if command else "") + f" from <code>{html.escape(str(run_dir))}</code>.</p>"]
    if report is not None:
        provenance = report.get("provenance") if isinstance(report.get("provenance"), Mapping) else {}
        split = report.get("split") or provenance.get("split")
        columns, rows = metrics_rows(report)
        n = next((rows[0][1][k][0] for k in ("n", "n_scans", "n_sessions") if rows and k in rows[0][1]), None)
        label = ", ".join(x for x in (f"{split} split" if split else "", f"n = {_number(n)}" if n is not None else "") if x)
        parts.append(f"<h2>Metrics{f' ({html.escape(label)})' if label else ''}</h2>")
        parts.append(_metrics_html(report))
    if plots:
        parts.append("<h2>Plots</h2><div>" + "".join(_image_tag(p, p.stem.replace("_", " "), "plot") for p in plots) + "</div>")
    if table is not None:
        parts.append("<h2>Sessions</h2>")
        sessions, _, _ = _sessions_html(run_dir, table, frame)
        parts.append(sessions)
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n<script>{_JS}</script>\n</body></html>\n")


def write_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    title: str | None = None,
    command: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write :func:`build_report` of ``run_dir`` to ``out`` (default ``run_dir/report.html``), atomically.

    Raises:
        ReportError: see :func:`build_report`.
        FileExistsError: ``out`` exists and ``overwrite`` is False.

    Examples:
        >>> write_report("bundles/lesion_seg/eval")  # doctest: +SKIP
        PosixPath('bundles/lesion_seg/eval/report.html')
    """
    from monai_ms.io import write_text

    out = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    return write_text(build_report(run_dir, title=title, command=command), out, overwrite=overwrite)

