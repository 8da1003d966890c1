"""The worklist page: server-rendered HTML, every value escaped.

Values come from DICOM headers that any modality can fill in, so each one goes through
:func:`html.escape`. As a second line of defence the page has no inline style or script:
its Content-Security-Policy lets only ``/static/worklist.css`` and ``/static/worklist.js``
apply. The page works without JavaScript (a meta
refresh in ``<noscript>``); with it, the table is swapped in place and a banner says so
when the server stops answering, instead of the browser showing an error page.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from triage.web.worklist import WorklistRow

FOOTER = "AI triage — not for diagnostic use"

_STATE_LABELS = {
    "receiving": "Receiving",
    "queued": "Queued",
    "analysing": "Analysing",
    "done": "Done",
    "undetermined": "Undetermined",
    "failed": "Failed",
    "skipped": "Skipped",
}

CSS = """
:root { --ink:#1d2733; --muted:#667085; --line:#e4e7ec; --bg:#f5f7fa; --pe:#b42318;
        --pe-bg:#fef3f2; --pe-line:#fda29b; --accent:#1f4e79; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 "DejaVu Sans", "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color:var(--ink); background:var(--bg); }
header { display:flex; align-items:baseline; justify-content:space-between; gap:16px;
         padding:14px 24px; background:var(--accent); color:#fff; }
header h1 { margin:0; font-size:18px; font-weight:600; letter-spacing:.2px; }
header .sub { font-size:12px; opacity:.85; }
.summary { display:flex; gap:18px; padding:12px 24px 0; color:var(--muted); font-size:13px; }
.summary b { color:var(--ink); }
.summary .pe b { color:var(--pe); }
main { padding:12px 24px 8px; }
.banner { margin:12px 24px 0; padding:8px 12px; border:1px solid #fec84b;
          background:#fffaeb; color:#93370d; border-radius:6px; }
table { width:100%; border-collapse:separate; border-spacing:0; background:#fff;
        border:1px solid var(--line); border-radius:8px; overflow:hidden; }
th { text-align:left; font-size:12px; font-weight:600; text-transform:uppercase;
     letter-spacing:.4px; color:var(--muted); background:#f9fafb; padding:9px 12px;
     border-bottom:1px solid var(--line); white-space:nowrap; }
td { padding:9px 12px; border-bottom:1px solid var(--line); vertical-align:top; }
tr:last-child td { border-bottom:0; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.acc { font-weight:600; font-family:"DejaVu Sans Mono", Menlo, Consolas, monospace; }
td.time { white-space:nowrap; font-variant-numeric:tabular-nums; color:#344054; }
tr.positive td { background:var(--pe-bg); }
tr.positive td:first-child { box-shadow:inset 4px 0 0 var(--pe); }
tr.skipped td { color:var(--muted); }
.badge { display:inline-block; padding:2px 9px; border-radius:999px; font-size:12px;
         font-weight:600; white-space:nowrap; }
.badge-pe { background:var(--pe); color:#fff; }
.state { display:inline-block; padding:1px 8px; border-radius:4px; font-size:12px;
         font-weight:600; border:1px solid transparent; white-space:nowrap; }
.state-receiving { background:#eff8ff; color:#175cd3; border-color:#b2ddff; }
.state-queued { background:#f2f4f7; color:#475467; border-color:#d0d5dd; }
.state-analysing { background:#eef4ff; color:#3538cd; border-color:#c7d7fe; }
.state-done { background:#ecfdf3; color:#067647; border-color:#abefc6; }
.state-undetermined { background:#fffaeb; color:#b54708; border-color:#fedf89; }
.state-failed { background:#fef3f2; color:#b42318; border-color:#fecdca; }
.state-skipped { background:#f9fafb; color:#98a2b3; border-color:#eaecf0; }
.detail { display:block; margin-top:3px; font-size:12px; color:var(--muted); max-width:36ch; }
.bar { margin-left:8px; vertical-align:middle; }
.bar .track { fill:#eaecf0; }
.bar .fill { fill:#98a2b3; }
tr.positive .bar .fill { fill:var(--pe); }
th.num { text-align:right; }
.muted { color:#98a2b3; }
.dl-dead { color:var(--pe); font-weight:600; }
.dl-retrying, .dl-pending { color:#b54708; }
.dl-sent { color:#067647; }
.empty { padding:32px; text-align:center; color:var(--muted); }
footer { padding:10px 24px 24px; font-size:12px; color:var(--muted); }
footer strong { color:#b42318; }
"""

SCRIPT = """
(function () {
  var every = Number(document.body.dataset.refresh || 15) * 1000;
  function refresh() {
    fetch(window.location.pathname, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        ["worklist", "summary", "updated"].forEach(function (id) {
          var fresh = doc.getElementById(id), old = document.getElementById(id);
          if (fresh && old) { old.replaceWith(fresh); }
        });
        document.getElementById("offline").hidden = true;
      })
      .catch(function () { document.getElementById("offline").hidden = false; })
      .finally(function () { window.setTimeout(refresh, every); });
  }
  window.setTimeout(refresh, every);
})();
"""


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _probability(row: WorklistRow) -> str:
    if row.probability is None:
        return '<span class="muted">—</span>'
    pct = row.probability * 100
    text = "<1%" if 0 < pct < 1 else f"{pct:.0f}%"
    # An SVG bar: its width is an attribute, which the CSP allows, where a style
    # attribute would need 'unsafe-inline'.
    width = 56 * min(max(pct, 0.0), 100.0) / 100
    return (
        f'{escape(text)}<svg class="bar" width="56" height="6" aria-hidden="true">'
        '<rect class="track" width="56" height="6" rx="3"/>'
        f'<rect class="fill" width="{width:.1f}" height="6" rx="3"/></svg>'
    )


def _delivery(row: WorklistRow) -> str:
    if not row.delivery:
        return '<span class="muted">—</span>'
    worst = next(
        (s for s in ("dead", "retrying", "pending") if any(d.state == s for d in row.deliveries)),
        "sent",
    )
    return f'<span class="dl-{worst}">{escape(row.delivery)}</span>'


def _row_html(row: WorklistRow) -> str:
    classes = ["study"]
    if row.flagged:
        classes.append("positive")
    if row.state == "skipped":
        classes.append("skipped")
    accession = (
        escape(row.accession_number)
        if row.accession_number
        else '<span class="muted">no accession</span>'
    )
    detail = f'<span class="detail">{escape(row.detail)}</span>' if row.detail else ""
    flag = (
        '<span class="badge badge-pe">PE suspected</span>'
        if row.flagged
        else '<span class="muted">—</span>'
    )
    slices = str(row.flagged_slices) if row.decision is not None else '<span class="muted">—</span>'
    state = escape(row.state)
    return (
        f'<tr class="{" ".join(classes)}" data-study="{escape(row.study_instance_uid)}"'
        f' data-state="{state}" data-flagged="{"true" if row.flagged else "false"}">'
        f'<td class="acc">{accession}</td>'
        f'<td class="time">{_time(row.arrived_at)}</td>'
        f'<td><span class="state state-{state}">{escape(_STATE_LABELS.get(row.state, row.state))}'
        f"</span>{detail}</td>"
        f'<td class="num">{_probability(row)}</td>'
        f"<td>{flag}</td>"
        f'<td class="num">{slices}</td>'
        f"<td>{_delivery(row)}</td>"
        "</tr>"
    )


def render_worklist(
    rows: list[WorklistRow],
    *,
    refresh_seconds: int,
    now: datetime,
    window_hours: float | None = None,
) -> str:
    """The whole worklist page.

    Parameters
    ----------
    rows : list of WorklistRow
        Rows in reading order.
    refresh_seconds : int
        How often the page reloads its table.
    now : datetime
        The time the page shows as last updated (naive UTC).
    window_hours : float, optional
        The list holds the studies of this many past hours (the page says so); all
        studies when ``None``.

    Returns
    -------
    str
        An HTML document.
    """
    positives = sum(1 for r in rows if r.flagged)
    pending = sum(1 for r in rows if r.state in ("receiving", "queued", "analysing"))
    window = f" in the last {window_hours:g} hours" if window_hours is not None else ""
    body = "".join(_row_html(r) for r in rows) or (
        f'<tr><td class="empty" colspan="7">No studies received{window or " yet"}.</td></tr>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<noscript><meta http-equiv="refresh" content="{int(refresh_seconds)}"></noscript>
<title>PE triage worklist</title>
<link rel="stylesheet" href="/static/worklist.css">
<link rel="icon" href="data:,">
</head>
<body data-refresh="{int(refresh_seconds)}">
<header>
  <h1>CTPA pulmonary embolism triage — worklist</h1>
  <span class="sub" id="updated">Updated {_time(now)} UTC · refreshes every
    {int(refresh_seconds)} s</span>
</header>
<div class="banner" id="offline" hidden>The server is not answering: this list may be out
  of date. It will update again as soon as the server answers.</div>
<div class="summary" id="summary">
  <span class="pe"><b>{positives}</b> PE suspected</span>
  <span><b>{pending}</b> in progress</span>
  <span><b>{len(rows)}</b> studies{window}</span>
</div>
<main id="worklist">
<table>
<thead><tr><th>Accession</th><th>Arrived (UTC)</th><th>State</th>
<th class="num">PE probability</th><th>Flag</th>
<th class="num">Flagged slices</th><th>Delivery</th></tr></thead>
<tbody>{body}</tbody>
</table>
</main>
<footer><strong>{escape(FOOTER)}.</strong> Results are preliminary and unverified; positive
  studies are listed first, by probability, and every other study keeps its arrival order.
</footer>
<script src="/static/worklist.js"></script>
</body>
</html>
"""


def render_unauthorized() -> str:
    """The page a browser sees without a valid token: how to sign in, nothing else."""
    return """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign-in required</title></head>
<body style="font-family:sans-serif;margin:40px;color:#1d2733">
<h1 style="font-size:20px">Sign-in required</h1>
<p>This worklist needs the access token set in the daemon's configuration
(<code>web.token</code>). Open <code>/?token=&lt;token&gt;</code> once; the browser
then keeps a session cookie.</p>
</body></html>
"""
