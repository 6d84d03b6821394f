"""The web view of ``aoe serve``: ``/`` lists the runs, ``/runs/ID`` shows one.

Two small pages, their CSS and script inline, no framework and no build step.
They hold no data: each asks the API with ``fetch``, so the API's token rules
are the pages' too. When the service has a token (``AOE_API_TOKEN``) and the
API answers 401, the page asks for it in a form and keeps it in the tab's
``sessionStorage`` (gone when the tab closes), sending it as the
``Authorization`` header; it never goes into a URL. Whatever a run holds is
put into the page as text (``textContent``), never as markup.

``/runs/ID`` loads the run's report (``GET /api/v1/runs/ID/report``, the same
HTML as ``aoe report``), which follows the run's events and refreshes itself
while it goes, with buttons to cancel it or to resume it.
"""

from __future__ import annotations

from typing import get_args

from aoe.observe.report import js_literal
from aoe.observe.resultschema import Status
from aoe.service.options import API

_STYLE = """
body{margin:0 auto;max-width:1200px;padding:16px 24px;font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif;color:#1b1f24}
h1{font-size:22px}a{color:#0a58ca}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #d0d7de}
th{color:#57606a;font-size:12px}
td.n{text-align:right}form{margin:10px 0}label{margin-right:14px}
input,select,button{font:inherit;padding:3px 6px}.error{color:#c62828}
.s-completed{color:#2e7d32}.s-failed{color:#c62828}.s-partial,.s-rate_limited{color:#e65100}
.s-budget_exceeded{color:#ad1457}.s-running,.s-queued{color:#1565c0}
.s-cancelled,.s-interrupted{color:#616161}
#login{border:1px solid #d0d7de;border-radius:6px;padding:12px;max-width:420px}
"""

# the token: asked for when the API says 401, kept in this tab only
_AUTH = """
function token(){return sessionStorage.getItem('aoe-token')||'';}
function api(path,options){options=options||{};var headers=options.headers||{};
var t=token();if(t)headers['Authorization']='Bearer '+t;options.headers=headers;
return fetch(path,options).then(function(r){if(r.status===401){login();
throw new Error('a token is needed');}return r;});}
function login(){var form=document.getElementById('login');form.hidden=false;
document.getElementById('token').focus();}
document.getElementById('login').addEventListener('submit',function(e){e.preventDefault();
sessionStorage.setItem('aoe-token',document.getElementById('token').value);
document.getElementById('login').hidden=true;start();});
"""

_LOGIN = (
    '<form id="login" hidden><p>This service needs its API token (<code>AOE_API_TOKEN</code>). '
    "It is kept in this tab only.</p>"
    '<label>Token <input id="token" type="password" autocomplete="current-password"></label>'
    "<button>Sign in</button></form>"
)

_STATUSES: tuple[str, ...] = get_args(Status)  # as the results document has them


def runs_page() -> str:
    """``/``: the runs, newest first, filtered by status and workflow."""
    options = "".join(f'<option value="{s}">{s}</option>' for s in _STATUSES)
    script = (
        _AUTH
        + f"var RUNS={js_literal(f'{API}/runs')};"
        + """
function money(v){return v==null?'':'$'+(v<0.01?v.toFixed(6):v.toFixed(4));}
function took(s){if(s==null)return '';if(s<60)return s.toFixed(1)+' s';
return Math.floor(s/60)+' min '+Math.round(s%60)+' s';}
function cell(row,text,kind){var td=document.createElement('td');td.textContent=text;
if(kind)td.className=kind;row.appendChild(td);return td;}
var timer=null;
function start(){clearTimeout(timer);var q=new URLSearchParams({limit:'200'});
var status=document.getElementById('status').value;
var workflow=document.getElementById('workflow').value.trim();
if(status)q.set('status',status);if(workflow)q.set('workflow',workflow);
api(RUNS+'?'+q).then(function(r){return r.json().then(function(body){
if(!r.ok)throw new Error(body.error||r.status);return body;});}).then(function(body){
var rows=document.querySelector('#runs tbody');rows.textContent='';
document.getElementById('said').textContent='';
body.runs.forEach(function(run){var row=document.createElement('tr');
row.dataset.status=run.status;row.dataset.run=run.run_id;
var a=document.createElement('a');a.href='/runs/'+encodeURIComponent(run.run_id);
a.textContent=run.run_id;var first=document.createElement('td');first.appendChild(a);
row.appendChild(first);cell(row,run.workflow.name);cell(row,run.status,'s-'+run.status);
cell(row,(run.started_at||'').replace('T',' ').slice(0,19));
cell(row,took(run.duration_seconds),'n');cell(row,money(run.cost_usd),'n');
cell(row,(run.usage.input_tokens+run.usage.output_tokens).toLocaleString(),'n');
rows.appendChild(row);});
document.getElementById('empty').hidden=body.runs.length>0;
timer=setTimeout(start,3000);}).catch(function(e){
document.getElementById('said').textContent=e.message;});}
document.getElementById('status').addEventListener('change',start);
document.getElementById('workflow').addEventListener('input',function(){
clearTimeout(timer);timer=setTimeout(start,300);});
start();
"""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>aoe · runs</title><style>{_STYLE}</style></head><body>"
        "<h1>aoe · runs</h1>"
        f"{_LOGIN}"
        '<form id="filters" onsubmit="return false">'
        f'<label>Status <select id="status"><option value="">any</option>{options}</select>'
        '</label><label>Workflow <input id="workflow" placeholder="its name"></label></form>'
        '<p id="said" class="error"></p>'
        '<table id="runs"><thead><tr><th>run</th><th>workflow</th><th>status</th>'
        "<th>started (UTC)</th><th>duration</th><th>cost</th><th>tokens</th></tr></thead>"
        '<tbody></tbody></table><p id="empty" hidden>No runs.</p>'
        f"<script>{script}</script></body></html>\n"
    )


def run_page(run_id: str) -> str:
    """``/runs/ID``: the run's report, loaded with the token, live while it goes."""
    script = (
        _AUTH
        + f"var REPORT={js_literal(f'{API}/runs/')}+encodeURIComponent({js_literal(run_id)})"
        + "+'/report';"
        + """
function start(){api(REPORT).then(function(r){return r.text().then(function(text){
if(!r.ok){var said=text;try{said=JSON.parse(text).error;}catch(e){}throw new Error(said);}
document.open();document.write(text);document.close();});}).catch(function(e){
document.getElementById('said').textContent=e.message;});}
start();
"""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>aoe · run</title><style>{_STYLE}</style></head><body>"
        '<p><a href="/">All runs</a></p>'
        f"{_LOGIN}"
        '<p id="said" class="error"></p>'
        f"<script>{script}</script></body></html>\n"
    )
