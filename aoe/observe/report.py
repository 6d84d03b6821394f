"""The run report: one self-contained HTML file (``aoe report``, ``aoe run --report``).

Everything is drawn here, in Python, from the run's record: the DAG coloured
by each agent's final state with the critical path marked, a timeline of every
attempt (waits for the rate limits, retries and fallbacks visible), cost per
agent and per model against the budget, tokens, every prompt, output and error
(collapsible), the run's inputs and settings. The page needs no network and
no script to be read (CSS, SVG and ``<details>``); a few lines of script link
the drawings to the agents' sections, filter the agents, and, in ``aoe serve``'s
live view, bring the page up to date as the run goes.

The critical path is the run's own, from its timings: the agent that finished
last, then the dependency of it that finished last, and so on back to a root:
the chain that decided how long the run took.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aoe.format.graph import Graph, GraphError
from aoe.observe.results import aoe_version, document_of, read_record

if TYPE_CHECKING:
    from aoe.state.rows import AttemptRow
    from aoe.state.store import Store

SHOWN_CHARACTERS = 20_000  # of one prompt, output or error; the rest is cut, with a note

STATE_COLOURS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "rate_limited": "#e65100",
    "budget_exceeded": "#ad1457",
    "cancelled": "#616161",
    "skipped": "#9e9e9e",
    "pending": "#bdbdbd",
    "waiting": "#f9a825",
    "running": "#1565c0",
}
ATTEMPT_COLOURS = {
    "ok": "#43a047",
    "cached": "#90a4ae",
    "error": "#e53935",
    "running": "#1e88e5",
    "interrupted": "#fb8c00",
}


@dataclass
class ReportData:
    """What the report shows of one run, read from the store."""

    document: dict[str, Any]
    needs: dict[str, list[str]]
    attempts: list[AttemptRow]
    prompts: dict[str, list[tuple[int | None, str | None, str]]]
    settings: dict[str, Any]
    workflow_text: str
    critical: list[str] = field(default_factory=list)
    # (agent, item or -1) -> when it first fell back to another model
    fallbacks: dict[tuple[str, int], float] = field(default_factory=dict)


def gather(store: Store, run_id: str) -> ReportData:
    """The run ``run_id`` of ``store``, as the report shows it: its record read
    once, for the results document and the rest."""
    record = read_record(store, run_id, events=("PromptRendered", "AgentFallback"))
    document = document_of(record)
    needs = {row.agent_id: list(row.needs or []) for row in record.agents}
    prompts: dict[str, dict[int | None, tuple[str | None, str]]] = {}
    fallbacks: dict[tuple[str, int], float] = {}
    for event in record.events:
        if event["type"] == "PromptRendered":
            by_item = prompts.setdefault(event["agent_id"], {})
            by_item[event.get("item")] = (event.get("system"), event.get("prompt") or "")
        elif event["type"] == "AgentFallback":
            item = event.get("item")
            fallbacks.setdefault((event["agent_id"], -1 if item is None else item), event["at"])
    data = ReportData(
        document=document,
        needs={a: [d for d in deps if d in needs] for a, deps in needs.items()},
        attempts=record.attempts,
        prompts={
            agent: [(item, *texts) for item, texts in sorted(by.items(), key=_item_order)]
            for agent, by in prompts.items()
        },
        settings=dict(record.run.settings or {}),
        workflow_text=record.run.workflow_text,
        fallbacks=fallbacks,
    )
    data.critical = critical_path(document, data.needs)
    return data


def _item_order(entry: tuple[int | None, Any]) -> int:
    return -1 if entry[0] is None else entry[0]


def critical_path(document: Mapping[str, Any], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """The chain that decided the run's length: the agent that finished last,
    then its dependency that finished last, back to one with none."""
    ended = {
        agent_id: agent["finished_at"]
        for agent_id, agent in document["agents"].items()
        if agent["finished_at"] and agent["attempts"]
    }
    if not ended:
        return []
    chain = [max(ended, key=lambda a: (ended[a], a))]
    seen = set(chain)
    while True:
        before = [d for d in needs.get(chain[-1], ()) if d in ended and d not in seen]
        if not before:
            break
        chain.append(max(before, key=lambda a: (ended[a], a)))
        seen.add(chain[-1])
    return list(reversed(chain))


# -- the page ------------------------------------------------------------------------------


def render(data: ReportData, *, live: Mapping[str, str] | None = None) -> str:
    """The report as one HTML document. ``live``: the run's API addresses in an
    ``aoe serve`` (``report``, ``events``, ``cancel``, ``resume``): the page
    follows the run's events, refreshes itself, and can cancel or resume it."""
    document = data.document
    title = f"{document['workflow']['name']} · {document['run_id']}"
    header = _header(data)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>aoe report · {_e(title)}</title>",
        f"<style>{_CSS}</style></head>",
        f'<body data-status="{_e(document["status"])}">',
        header,
        _summary(data),
        _outputs(document),
        _failures(document),
        _graph(data),
        _timeline(data),
        _costs(data),
        _agents(data),
        _run(data),
        f"<footer>Made by aoe {_e(aoe_version())} at "
        f"{_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}.</footer>",
        f"<script>{_SCRIPT}</script>",
    ]
    if live is not None:
        parts.insert(parts.index(header) + 1, _ACTIONS)
        parts.append(f"<script>const AOE_LIVE = {js_literal(live)};{_LIVE}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_html(store: Store, run_id: str) -> str:
    """The report of ``run_id``, from ``store``."""
    return render(gather(store, run_id))


def js_literal(value: Any) -> str:
    """``value`` as a JavaScript literal that cannot end the script it is in."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


_ACTIONS = (
    '<div id="actions"><a href="/">All runs</a> '
    '<button id="act-cancel" type="button">Cancel the run</button>'
    '<button id="act-resume" type="button">Resume the run</button>'
    ' <span id="act-said"></span></div>'
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _money(amount: float | None) -> str:
    if amount is None:
        return "—"
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.6f}".rstrip("0")
    return f"${amount:,.4f}".rstrip("0").rstrip(".")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(value, 60)
    if minutes < 60:
        return f"{int(minutes)} min {seconds:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _tokens(usage: Mapping[str, int]) -> str:
    return f"{usage['input_tokens']:,} in · {usage['output_tokens']:,} out"


def _text(value: Any, what: str, run_id: str, agent: str | None = None) -> str:
    """A prompt, output or error as preformatted text, cut at SHOWN_CHARACTERS."""
    text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
    more = ""
    if len(text) > SHOWN_CHARACTERS:
        rest = len(text) - SHOWN_CHARACTERS
        where = f"aoe runs output {run_id} {agent}" if agent and what == "output" else ""
        tell = f": <code>{_e(where)}</code> prints it whole" if where else ""
        text = text[:SHOWN_CHARACTERS]
        more = f'<p class="cut">… {rest:,} more characters{tell}.</p>'
    return f'<pre class="{_e(what)}">{_e(text)}</pre>{more}'


def _header(data: ReportData) -> str:
    d = data.document
    status = d["status"]
    return (
        "<header>"
        f"<h1>{_e(d['workflow']['name'])} "
        f'<span class="badge s-{_e(status)}">{_e(status)}</span></h1>'
        f'<p class="meta">run <code>{_e(d["run_id"])}</code> · {_e(d["workflow"]["file"])}'
        f" · started {_e(d['started_at'] or '—')}"
        f" · session {_e(d.get('session') or 1)}</p>"
        '<nav><a href="#outputs">Outputs</a><a href="#graph">Graph</a>'
        '<a href="#timeline">Timeline</a><a href="#costs">Costs</a>'
        '<a href="#agents">Agents</a><a href="#run">Inputs and settings</a></nav>'
        "</header>"
    )


def _counts(agents: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for agent in agents.values():
        counts[agent["state"]] = counts.get(agent["state"], 0) + 1
    return counts


def _summary(data: ReportData) -> str:
    d = data.document
    agents = d["agents"]
    attempts = sum(len(a["attempts"]) for a in agents.values())
    counts = " · ".join(
        f'<span class="s-{_e(state)}">{n} {_e(state)}</span>'
        for state, n in sorted(_counts(agents).items())
    )
    budget = d["cost_budget_usd"]
    gauge = ""
    if budget:
        share = min(d["cost_usd"] / budget, 1.0) if budget else 0.0
        gauge = (
            f'<span class="gauge" title="{share:.0%} of the budget">'
            f'<i style="width:{share * 100:.1f}%"></i></span>'
        )
    figures = [
        ("Status", f'<span class="s-{_e(d["status"])}">{_e(d["status"])}</span>'),
        ("Duration", _e(_seconds(d["duration_seconds"]))),
        ("Cost", f"{_money(d['cost_usd'])} of {_money(budget)} budget{gauge}"),
        ("Tokens", _e(_tokens(d["usage"]))),
        ("Agents", f"{len(agents)}: {counts}"),
        ("Attempts", str(attempts)),
        ("Critical path", _e(" → ".join(data.critical)) or "—"),
    ]
    rows = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in figures)
    return f'<section id="summary"><dl class="figures">{rows}</dl></section>'


def _outputs(document: Mapping[str, Any]) -> str:
    outputs = document["outputs"]
    errors = document["output_errors"]
    if not outputs and not errors:
        return (
            '<section id="outputs"><h2>Outputs</h2><p class="none">The workflow has no '
            "outputs (yet): each agent's is under Agents.</p></section>"
        )
    items = [
        f"<details open><summary>{_e(name)}</summary>"
        f"{_text(value, 'output', document['run_id'])}</details>"
        for name, value in outputs.items()
    ]
    items += [
        f'<details open class="error"><summary>{_e(name)}: not rendered</summary>'
        f"{_text(error, 'error', document['run_id'])}</details>"
        for name, error in errors.items()
    ]
    return f'<section id="outputs"><h2>Outputs</h2>{"".join(items)}</section>'


_FAILURES = ("failed", "rate_limited", "budget_exceeded")


def _failures(document: Mapping[str, Any]) -> str:
    failed = [(a, agent) for a, agent in document["agents"].items() if agent["state"] in _FAILURES]
    if not failed:
        return ""
    items = "".join(
        f'<li><a href="#agent-{_e(a)}">{_e(a)}</a> <span class="s-{_e(agent["state"])}">'
        f"{_e(agent['state'])}</span>: {_e((agent['error'] or '')[:2000])}</li>"
        for a, agent in failed
    )
    return f'<section id="failures"><h2>Failures</h2><ul>{items}</ul></section>'


# -- the graph -----------------------------------------------------------------------------

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 168, 28, 56, 10, 12


def _levels(needs: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Each agent's column: its depth in the graph (a record damaged into a
    cycle, which no workflow can make, draws in one column)."""
    try:
        return Graph(needs).levels()
    except GraphError:
        return dict.fromkeys(needs, 0)


def _graph(data: ReportData) -> str:
    agents = data.document["agents"]
    order = list(agents)
    if not order:
        return ""
    level = _levels({agent: data.needs.get(agent, ()) for agent in order})
    columns: dict[int, list[str]] = {}
    for agent in order:
        columns.setdefault(level[agent], []).append(agent)
    place: dict[str, tuple[float, float]] = {}
    for column, members in columns.items():
        for row, agent in enumerate(members):
            place[agent] = (PAD + column * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y))
    width = PAD * 2 + (max(columns) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(len(m) for m in columns.values()) * (NODE_H + GAP_Y) - GAP_Y
    critical = set(data.critical)
    on_path = set(zip(data.critical, data.critical[1:], strict=False))
    edges = []
    for agent in order:
        x2, y2 = place[agent]
        for dep in data.needs.get(agent, ()):
            if dep not in place:
                continue
            x1, y1 = place[dep]
            x1, y1, y2 = x1 + NODE_W, y1 + NODE_H / 2, y2 + NODE_H / 2
            bend = (x2 - x1) / 2
            kind = "edge critical" if (dep, agent) in on_path else "edge"
            edges.append(
                f'<path class="{kind}" d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} '
                f'{x2 - bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"/>'
            )
    nodes = []
    for agent in order:
        x, y = place[agent]
        state = agents[agent]["state"]
        kind = "node critical" if agent in critical else "node"
        label = agent if len(agent) <= 22 else agent[:21] + "…"
        took = _seconds(agents[agent]["duration_seconds"])
        nodes.append(
            f'<a href="#agent-{_e(agent)}" class="{kind}" data-agent="{_e(agent)}" '
            f'data-state="{_e(state)}"><title>{_e(agent)}: {_e(state)}, {_e(took)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="5" '
            f'fill="{STATE_COLOURS.get(state, "#999")}"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}">{_e(label)}</text></a>'
        )
    legend = " ".join(
        f'<span><i style="background:{colour}"></i>{_e(state)}</span>'
        for state, colour in STATE_COLOURS.items()
        if any(a["state"] == state for a in agents.values())
    )
    return (
        '<section id="graph"><h2>Graph</h2>'
        f'<p class="legend">{legend} <span><i class="crit"></i>critical path</span></p>'
        f'<div class="scroll"><svg class="dag" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="The agents and '
        f'what each depends on">{"".join(edges)}{"".join(nodes)}</svg></div></section>'
    )


# -- the timeline --------------------------------------------------------------------------

ROW_H, LABEL_W, PLOT_W = 20, 190, 900


def _timeline(data: ReportData) -> str:
    attempts = data.attempts
    if not attempts:
        return (
            '<section id="timeline"><h2>Timeline</h2><p class="none">No attempt yet.</p></section>'
        )
    now = time.time()
    spans = [(a, a.started_at, a.finished_at or now) for a in attempts]
    t0 = min(a.started_at - a.waited for a in attempts)
    t1 = max(end for _, _, end in spans)
    span = max(t1 - t0, 1e-3)
    agents = data.document["agents"]
    rows: dict[str, int] = {}
    for attempt, _, _ in sorted(spans, key=lambda s: (s[1], s[0].agent_id)):
        rows.setdefault(attempt.agent_id, len(rows))
    critical = set(data.critical)
    height = len(rows) * ROW_H + 30
    scale = PLOT_W / span
    parts = []
    for agent, row in rows.items():
        y = row * ROW_H
        kind = "label critical" if agent in critical else "label"
        name = agent if len(agent) <= 26 else agent[:25] + "…"
        state = agents.get(agent, {}).get("state", "")
        if agent in critical:
            parts.append(
                f'<rect class="lane" x="0" y="{y}" width="{LABEL_W + PLOT_W}" height="{ROW_H}"/>'
            )
        parts.append(
            f'<a href="#agent-{_e(agent)}"><text class="{kind}" x="4" y="{y + 14}" '
            f'data-state="{_e(state)}">{_e(name)}</text></a>'
        )
    for attempt, start, end in spans:
        y = rows[attempt.agent_id] * ROW_H + 3
        status = _attempt_status(attempt)
        if attempt.waited > 0:
            x = LABEL_W + (start - attempt.waited - t0) * scale
            w = max(attempt.waited * scale, 1.0)
            parts.append(
                f'<rect class="wait" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW_H - 6}">'
                f"<title>{_e(attempt.agent_id)}: held back {_seconds(attempt.waited)} by the "
                "rate limits</title></rect>"
            )
        x = LABEL_W + (start - t0) * scale
        w = max((end - start) * scale, 1.5)
        item = "" if attempt.item < 0 else f" item {attempt.item}"
        why = f": {attempt.error[:300]}" if attempt.error else ""
        kind = "attempt critical" if attempt.agent_id in critical else "attempt"
        since = data.fallbacks.get((attempt.agent_id, attempt.item))
        if since is not None and start >= since:  # after the agent's model gave up
            kind += " fallback"
        parts.append(
            f'<rect class="{kind}" data-agent="{_e(attempt.agent_id)}" '
            f'data-status="{status}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW_H - 6}" '
            f'fill="{ATTEMPT_COLOURS[status]}"><title>{_e(attempt.agent_id)}{item}, attempt '
            f"{attempt.attempt} on {_e(attempt.provider)}/{_e(attempt.model)}: {status} in "
            f"{_e(_seconds(end - start))}{_e(why)}</title></rect>"
        )
    ticks = []
    step = _tick(span)
    mark = 0.0
    while mark <= span + 1e-9:
        x = LABEL_W + mark * scale
        ticks.append(
            f'<line class="tick" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 24}"/>'
            f'<text class="axis" x="{x:.1f}" y="{height - 8}">{_e(_seconds(mark))}</text>'
        )
        mark += step
    legend = " ".join(
        f'<span><i style="background:{colour}"></i>{_e(status)}</span>'
        for status, colour in ATTEMPT_COLOURS.items()
    )
    width = LABEL_W + PLOT_W + 40
    return (
        '<section id="timeline"><h2>Timeline</h2>'
        f'<p class="legend">One bar per attempt. {legend} <span><i class="waitkey"></i>held '
        'back by the rate limits</span> <span><i class="fallbackkey"></i>a fallback model</span> '
        '<span><i class="crit"></i>critical path</span></p>'
        f'<div class="scroll"><svg class="gantt" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Every attempt in time">'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="3" height="6" fill="#f9a825"/></pattern>'
        f"</defs>{''.join(ticks)}{''.join(parts)}</svg></div></section>"
    )


def _attempt_status(attempt: AttemptRow) -> str:
    status = str(attempt.status)
    if status == "started":
        return "running" if attempt.finished_at is None else "interrupted"
    return "error" if status == "cancelled" else status


def _tick(span: float) -> float:
    """A round step giving 4 to 10 ticks over ``span`` seconds."""
    raw = span / 6
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


# -- costs ---------------------------------------------------------------------------------


def _costs(data: ReportData) -> str:
    d = data.document
    agents = d["agents"]
    total = d["cost_usd"] or 0.0
    budget = d["cost_budget_usd"]
    scale = max(budget or 0.0, total, max((a["cost_usd"] for a in agents.values()), default=0))
    models: dict[tuple[str, str], list[float]] = {}
    for attempt in data.attempts:
        spent = attempt.reserved if str(attempt.status) == "started" else attempt.cost
        figures = models.setdefault((attempt.provider, attempt.model), [0.0, 0, 0, 0])
        figures[0] += spent
        figures[1] += attempt.input_tokens
        figures[2] += attempt.output_tokens
        figures[3] += 1

    def bar(amount: float) -> str:
        share = amount / scale if scale else 0.0
        return f'<span class="bar"><i style="width:{share * 100:.1f}%"></i></span>'

    by_agent = sorted(agents.items(), key=lambda item: -item[1]["cost_usd"])
    agent_rows = "".join(
        f'<tr><td><a href="#agent-{_e(a)}">{_e(a)}</a></td><td>{_e(agent["provider"])}/'
        f'{_e(agent["model"])}</td><td class="n">{_money(agent["cost_usd"])}</td>'
        f'<td class="n">{agent["usage"]["input_tokens"]:,}</td>'
        f'<td class="n">{agent["usage"]["output_tokens"]:,}</td>'
        f'<td class="n">{len(agent["attempts"])}</td><td>{bar(agent["cost_usd"])}</td></tr>'
        for a, agent in by_agent
    )
    model_rows = "".join(
        f'<tr><td>{_e(p)}/{_e(m)}</td><td class="n">{_money(round(f[0], 6))}</td>'
        f'<td class="n">{int(f[1]):,}</td><td class="n">{int(f[2]):,}</td>'
        f'<td class="n">{int(f[3])}</td><td>{bar(f[0])}</td></tr>'
        for (p, m), f in sorted(models.items(), key=lambda item: -item[1][0])
    )
    budget_line = (
        f"{_money(total)} spent of a {_money(budget)} budget ({total / budget:.0%})"
        if budget
        else f"{_money(total)} spent; no budget was set"
    )
    many = len(by_agent) > 30
    return (
        '<section id="costs"><h2>Costs</h2>'
        f"<p>{budget_line}. Bars are to the scale of {_money(scale)}.</p>"
        "<h3>By model</h3><table><thead><tr><th>model</th><th>cost</th><th>tokens in</th>"
        "<th>tokens out</th><th>attempts</th><th></th></tr></thead>"
        f"<tbody>{model_rows}</tbody></table>"
        f"<details{'' if many else ' open'}><summary>By agent ({len(by_agent)})</summary>"
        "<table><thead><tr><th>agent</th><th>model</th><th>cost</th><th>tokens in</th>"
        "<th>tokens out</th><th>attempts</th><th></th></tr></thead>"
        f"<tbody>{agent_rows}</tbody></table></details></section>"
    )


# -- the agents ----------------------------------------------------------------------------


def _agents(data: ReportData) -> str:
    d = data.document
    run_id = d["run_id"]
    states = sorted({a["state"] for a in d["agents"].values()})
    filters = "".join(
        f'<label><input type="checkbox" checked data-filter="{_e(s)}"> {_e(s)}</label>'
        for s in states
    )
    sections = [
        '<section id="agents"><h2>Agents</h2>',
        f'<p class="filters">Show: {filters}</p>',
    ]
    for agent_id, agent in d["agents"].items():
        state = agent["state"]
        needs = ", ".join(data.needs.get(agent_id, ())) or "nothing"
        body = [
            f'<p class="meta">{_e(agent["provider"])}/{_e(agent["model"])} · depends on '
            f"{_e(needs)} · {_e(_tokens(agent['usage']))} · {_money(agent['cost_usd'])} · "
            f"{_e(_seconds(agent['duration_seconds']))}"
            + (" · its reply was cut off at max_tokens" if agent.get("truncated") else "")
            + (" · from an earlier session" if agent.get("resumed") else "")
            + "</p>"
        ]
        if agent["error"]:
            body.append(f"<h4>Error</h4>{_text(agent['error'], 'error', run_id)}")
        for item, system, prompt in data.prompts.get(agent_id, []):
            which = "" if item is None else f" (item {item})"
            if system:
                body.append(
                    f"<details><summary>System prompt{which}</summary>"
                    f"{_text(system, 'prompt', run_id)}</details>"
                )
            body.append(
                f"<details><summary>Prompt{which}</summary>"
                f"{_text(prompt, 'prompt', run_id)}</details>"
            )
        if agent["output"] is not None:
            body.append(
                "<details open><summary>Output</summary>"
                f"{_text(agent['output'], 'output', run_id, agent_id)}</details>"
            )
        attempts = agent["attempts"]
        plain = len(attempts) == 1 and attempts[0]["status"] in ("ok", "cached")
        if plain:  # one answer: the line above says it all but how it ended
            one = attempts[0]
            body[0] = body[0].replace(
                "</p>",
                f" · {_e(one['status'])}, finish reason {_e(one['finish_reason'] or '—')}</p>",
            )
        if attempts and not plain:
            rows = "".join(
                f'<tr class="a-{_e(a["status"])}"><td>{a["session"]}</td>'
                f"<td>{'' if a['item'] is None else a['item']}</td><td>{a['attempt']}</td>"
                f"<td>{_e(a['provider'])}/{_e(a['model'])}</td><td>{_e(a['status'])}</td>"
                f'<td class="n">{_e(_seconds(a["duration_seconds"]))}</td>'
                f'<td class="n">{_e(_seconds(a["waited_seconds"]))}</td>'
                f'<td class="n">{_money(a["cost_usd"])}</td>'
                f"<td>{_e(a['finish_reason'] or '')}</td>"
                f"<td>{_e((a['error'] or '')[:500])}</td></tr>"
                for a in agent["attempts"]
            )
            body.append(
                '<table class="attempts"><thead><tr><th>session</th><th>item</th>'
                "<th>attempt</th><th>model</th><th>status</th><th>took</th><th>waited</th>"
                "<th>cost</th><th>finish</th><th>error</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        opened = " open" if state in _FAILURES else ""
        sections.append(
            f'<details class="agent" id="agent-{_e(agent_id)}" data-state="{_e(state)}"{opened}>'
            f'<summary><b>{_e(agent_id)}</b> <span class="s-{_e(state)}">{_e(state)}</span>'
            f" · {len(agent['attempts'])} attempt{'s' if len(agent['attempts']) != 1 else ''}"
            f" · {_money(agent['cost_usd'])}</summary>{''.join(body)}</details>"
        )
    sections.append("</section>")
    return "".join(sections)


def _run(data: ReportData) -> str:
    d = data.document
    settings = {k: v for k, v in data.settings.items() if v is not None}
    return (
        '<section id="run"><h2>Inputs and settings</h2>'
        f"<h3>Inputs</h3>{_text(d['inputs'], 'inputs', d['run_id'])}"
        f"<h3>Settings</h3>{_text(settings, 'settings', d['run_id'])}"
        f"<details><summary>The workflow file ({_e(d['workflow']['file'])}, sha256 "
        f"{_e((d['workflow']['sha256'] or '')[:12])})</summary>"
        f"{_text(data.workflow_text, 'workflow', d['run_id'])}</details></section>"
    )


_CSS = """
:root{--fg:#1b1f24;--mute:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--crit:#6a1b9a}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1200px;padding:16px 24px 48px;font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid
var(--line);padding-bottom:4px}h3{font-size:15px;margin:16px 0 6px}h4{margin:10px 0 4px}
code,pre{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px 10px;
white-space:pre-wrap;word-break:break-word;max-height:480px;overflow:auto;margin:6px 0}
pre.error{background:#fff5f5;border-color:#f5c2c2}
.meta{color:var(--mute);margin:2px 0 8px}nav a{margin-right:14px}a{color:#0a58ca}
.badge{font-size:13px;padding:2px 8px;border-radius:12px;color:#fff!important;
vertical-align:middle;background:#888}
.badge.s-completed{background:#2e7d32}.badge.s-failed{background:#c62828}
.badge.s-partial{background:#e65100}.badge.s-budget_exceeded{background:#ad1457}
.badge.s-running,.badge.s-queued{background:#1565c0}.badge.s-cancelled,
.badge.s-interrupted{background:#616161}
.s-completed{color:#2e7d32}.s-failed{color:#c62828}.s-rate_limited,.s-partial{color:#e65100}
.s-budget_exceeded{color:#ad1457}.s-running{color:#1565c0}.s-skipped,.s-pending,.s-cancelled,
.s-interrupted{color:#616161}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:8px;
margin:12px 0}
.figures div{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px 10px}
dt{color:var(--mute);font-size:12px}dd{margin:2px 0 0;font-weight:600}
.gauge,.bar{display:block;height:8px;background:#e7eaee;border-radius:4px;overflow:hidden;
margin-top:4px;min-width:80px}.gauge i,.bar i{display:block;height:100%;background:#0969da}
.gauge i{background:#ad1457}
.scroll{overflow:auto;border:1px solid var(--line);border-radius:6px;max-height:720px}
svg text{font:12px system-ui,sans-serif}
.dag text{fill:#fff;pointer-events:none}.dag .edge{fill:none;stroke:#8c959f;stroke-width:1.2}
.dag .edge.critical{stroke:var(--crit);stroke-width:3}
.dag .node.critical rect{stroke:var(--crit);stroke-width:3}
.gantt .tick{stroke:#eaeef2}.gantt .axis{fill:var(--mute);font-size:11px}
.gantt .label{fill:var(--fg)}.gantt .label.critical{font-weight:700;fill:var(--crit)}
.gantt .lane{fill:#f3e5f5}.gantt .wait{fill:url(#hatch);opacity:.8}
.gantt .attempt.critical{stroke:var(--crit);stroke-width:2}
.gantt .attempt.fallback{stroke:#000;stroke-width:1.5;stroke-dasharray:3 2}
.legend i.fallbackkey{border:1.5px dashed #000}
.legend span{margin-right:12px;white-space:nowrap}.legend i{display:inline-block;width:12px;
height:12px;border-radius:3px;margin-right:4px;vertical-align:-2px}
.legend i.crit{border:3px solid var(--crit)}.legend i.waitkey{background:#f9a825;opacity:.8}
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid var(--line);vertical-align:top}td.n{text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--mute);font-size:12px}
details.agent{border:1px solid var(--line);border-radius:6px;margin:6px 0;padding:6px 10px}
details.agent[data-state=failed],details.agent[data-state=rate_limited],
details.agent[data-state=budget_exceeded]{border-color:#f5c2c2;background:#fffafa}
summary{cursor:pointer}.filters label{margin-right:12px}.none,.cut{color:var(--mute)}
tr.a-error td{color:#a40e26}footer{margin-top:40px;color:var(--mute);font-size:12px}
#failures li{margin:4px 0}
#actions{margin:8px 0}#actions button{font:inherit;padding:3px 10px;margin-left:10px}
#act-cancel,#act-resume{display:none}
body[data-status=running] #act-cancel,body[data-status=queued] #act-cancel{display:inline}
body[data-status=failed] #act-resume,body[data-status=partial] #act-resume,
body[data-status=budget_exceeded] #act-resume,body[data-status=cancelled] #act-resume,
body[data-status=interrupted] #act-resume{display:inline}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--mute:#9da7b3;--line:#30363d;--bg:#0d1117;
--soft:#161b22;--crit:#d2a8ff}.gantt .lane{fill:#2a1f3d}pre.error{background:#2d1416}
details.agent[data-state=failed]{background:#1f1416}a{color:#58a6ff}}
"""

_SCRIPT = """
(function(){
function openTarget(){var id=decodeURIComponent(location.hash.slice(1));if(!id)return;
var el=document.getElementById(id);if(el&&el.tagName==='DETAILS'){el.open=true;}}
window.addEventListener('hashchange',openTarget);openTarget();
document.querySelectorAll('[data-filter]').forEach(function(box){
box.addEventListener('change',function(){var state=box.getAttribute('data-filter');
document.querySelectorAll('details.agent[data-state="'+state+'"]').forEach(function(d){
d.style.display=box.checked?'':'none';});});});
})();
"""

# the live view (aoe serve): the run's events, read with the token kept in the
# page (never in a URL), bring the report up to date at most once a second
_LIVE = """
(function(){
var token=sessionStorage.getItem('aoe-token')||'';
var headers=token?{'Authorization':'Bearer '+token}:{};
var due=null,busy=false;
function refresh(){due=null;if(busy){later();return;}busy=true;
fetch(AOE_LIVE.report,{headers:headers}).then(function(r){return r.ok?r.text():null;})
.then(function(text){busy=false;if(text===null)return;var open={};
document.querySelectorAll('details[id]').forEach(function(d){open[d.id]=d.open;});
var doc=new DOMParser().parseFromString(text,'text/html');
['summary','outputs','failures','graph','timeline','costs','agents'].forEach(function(id){
var now=document.getElementById(id),next=doc.getElementById(id);
if(now&&next){now.replaceWith(next);}else if(!now&&next){
document.getElementById('outputs').after(next);}});
document.body.setAttribute('data-status',doc.body.getAttribute('data-status'));
var h=document.querySelector('header h1'),nh=doc.querySelector('header h1');
if(h&&nh)h.replaceWith(nh);
document.querySelectorAll('details[id]').forEach(function(d){if(d.id in open)d.open=open[d.id];});
document.dispatchEvent(new Event('aoe-refreshed'));}).catch(function(){busy=false;});}
function later(){if(!due)due=setTimeout(refresh,1000);}
async function follow(){try{var r=await fetch(AOE_LIVE.events,{headers:headers});
var reader=r.body.getReader(),dec=new TextDecoder(),buf='';
while(true){var c=await reader.read();if(c.done)break;buf+=dec.decode(c.value,{stream:true});
var frames=buf.split('\\n\\n');buf=frames.pop();
frames.forEach(function(f){if(f.indexOf('event: end')>=0){refresh();}
else if(f.indexOf('data:')>=0){later();}});}
}catch(e){}setTimeout(refresh,250);}
function act(which,url){document.getElementById('act-said').textContent='…';
fetch(url,{method:'POST',headers:headers}).then(function(r){return r.json().then(function(b){
document.getElementById('act-said').textContent=r.ok?(b.status||'done'):(b.error||r.status);
if(r.ok){if(which==='resume'){follow();}else{later();}}});})
.catch(function(e){document.getElementById('act-said').textContent=String(e);});}
document.getElementById('act-cancel').addEventListener('click',function(){
act('cancel',AOE_LIVE.cancel);});
document.getElementById('act-resume').addEventListener('click',function(){
act('resume',AOE_LIVE.resume);});
follow();
})();
"""
