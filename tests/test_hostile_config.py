"""Configuration that would lift a limit, hang a run or send a key elsewhere
(issue 13, findings 7 and 9): each is exit 2 naming the variable, key or
option, before any call; input files are read only when they are regular
files, and never past their limit; a base URL set by a ``.env`` file is said
at every run, and ``aoe config show`` says where each key goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aoe.config.environment import (
    BUILTIN_URL_VARIABLES,
    CONFIG_FILE_VARIABLE,
    ENVIRONMENT_VARIABLES,
)
from tests.conftest import OPENAI_KEY, RunCli, WriteFile, child_env
from tests.fakeserver import FakeProvider

MOCK_WORKFLOW = """\
version: 1
name: t
agents:
  a:
    llm: {provider: mock, model: gpt-4o-mini}
    prompt: hi
"""
MOCK_LATENCY_VARIABLE = "AOE_MOCK_LATENCY"
OPENAI_WORKFLOW = """\
version: 1
name: t
agents:
  a:
    llm: {provider: openai, model: gpt-4o-mini}
    prompt: hi
    retry: {max_retries: 0}
"""


def refused_before_any_call(result: object) -> None:
    stderr = getattr(result, "stderr", "")
    assert getattr(result, "exit_code", None) == 2, stderr
    assert "started" not in stderr
    assert "internal error" not in stderr


# -- numbers that are not finite ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param(
            "retry_policy: {base_delay: .inf, max_delay: .inf}", "base_delay", id="delays"
        ),
        pytest.param("retry_policy: {max_delay: .inf}", "retry_policy.max_delay", id="max_delay"),
        pytest.param(
            "cost_tracking: {default_workflow_budget: .inf}",
            "cost_tracking.default_workflow_budget",
            id="workflow-budget-inf",
        ),
        pytest.param(
            "cost_tracking: {default_workflow_budget: 1e400}",
            "cost_tracking.default_workflow_budget",
            id="workflow-budget-1e400",
        ),
        pytest.param(
            "cost_tracking: {default_agent_budget: .nan}",
            "cost_tracking.default_agent_budget",
            id="agent-budget-nan",
        ),
        pytest.param(
            "cost_tracking: {daily_budget: .inf}", "cost_tracking.daily_budget", id="daily"
        ),
        pytest.param(
            "cost_tracking: {workflow_daily_budgets: {nightly: .inf}}",
            "cost_tracking.workflow_daily_budgets.nightly",
            id="workflow-daily",
        ),
        pytest.param(
            "cost_tracking: {model_costs: {m: {input: .inf, output: 1}}}",
            "cost_tracking.model_costs.m.input",
            id="price",
        ),
        pytest.param(
            "monitoring: {metrics_interval: .inf}", "monitoring.metrics_interval", id="interval"
        ),
        pytest.param(
            "providers: {local: {base_url: 'http://h/v1', default_price: "
            "{input: .nan, output: 0}}}",
            "providers.local.default_price.input",
            id="default-price",
        ),
    ],
)
def test_non_finite_number_in_the_config_file(
    cli: RunCli, write: WriteFile, text: str, key: str
) -> None:
    config = write(text + "\n", "c.yaml")
    result = cli("run", write(MOCK_WORKFLOW), "--mock", "--config", config)
    refused_before_any_call(result)
    assert f"{config}:1:" in result.stderr
    assert f"{key} must be a finite number" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("RETRY_BASE_DELAY", "inf", id="RETRY_BASE_DELAY-inf"),
        pytest.param("RETRY_MAX_DELAY", "Infinity", id="RETRY_MAX_DELAY-Infinity"),
        pytest.param("DEFAULT_WORKFLOW_BUDGET", "inf", id="DEFAULT_WORKFLOW_BUDGET-inf"),
        pytest.param("DEFAULT_WORKFLOW_BUDGET", "1e400", id="DEFAULT_WORKFLOW_BUDGET-1e400"),
        pytest.param("DEFAULT_WORKFLOW_BUDGET", "nan", id="DEFAULT_WORKFLOW_BUDGET-nan"),
        pytest.param("DEFAULT_AGENT_BUDGET", "inf", id="DEFAULT_AGENT_BUDGET-inf"),
        pytest.param("DEFAULT_AGENT_BUDGET", "-nan", id="DEFAULT_AGENT_BUDGET-nan"),
        pytest.param(MOCK_LATENCY_VARIABLE, "nan", id="AOE_MOCK_LATENCY-nan"),
        pytest.param(MOCK_LATENCY_VARIABLE, "inf", id="AOE_MOCK_LATENCY-inf"),
        pytest.param(MOCK_LATENCY_VARIABLE, "-1", id="AOE_MOCK_LATENCY-negative"),
        pytest.param(MOCK_LATENCY_VARIABLE, "soon", id="AOE_MOCK_LATENCY-text"),
    ],
)
@pytest.mark.parametrize(
    "where", [pytest.param("env", id="env"), pytest.param(".env", id="dotenv")]
)
def test_non_finite_environment_variable(
    cli: RunCli, write: WriteFile, variable: str, value: str, where: str
) -> None:
    if where == ".env":
        write(f"{variable}={value}\n", ".env")
        result = cli("run", write(MOCK_WORKFLOW), "--mock")
        assert f".env:1: error: {variable}={value!r}: " in result.stderr
    else:
        result = cli("run", write(MOCK_WORKFLOW), "--mock", env={variable: value})
        assert f"environment: error: {variable}={value!r}: " in result.stderr
    refused_before_any_call(result)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400"])
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["run", "WF", "--mock", "--budget"], id="run"),
        pytest.param(["plan", "WF", "--budget"], id="plan"),
        pytest.param(["resume", "some-run", "--budget"], id="resume"),
        pytest.param(["submit", "WF", "--budget"], id="submit"),
        pytest.param(["worker", "--lease"], id="worker-lease"),
    ],
)
def test_non_finite_number_option(
    cli: RunCli, write: WriteFile, command: list[str], value: str
) -> None:
    path = str(write(MOCK_WORKFLOW))
    result = cli(*[path if part == "WF" else part for part in command], value)
    refused_before_any_call(result)
    assert f"Invalid value for '{command[-1]}'" in result.stderr
    if not value.startswith("-"):  # (below the least already)
        assert "not a finite number" in result.stderr


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        pytest.param("cost_budget: .inf\n", "cost_budget", id="cost_budget"),
        pytest.param("defaults: {timeout: .inf}\n", "defaults.timeout", id="defaults-timeout"),
        pytest.param("defaults: {cost_limit: 1e400}\n", "defaults.cost_limit", id="cost_limit"),
        pytest.param(
            "defaults: {retry: {base_delay: .inf, max_delay: .inf}}\n",
            "defaults.retry.base_delay",
            id="retry-delays",
        ),
        pytest.param(
            "defaults: {llm: {temperature: .nan}}\n", "defaults.llm.temperature", id="temperature"
        ),
        pytest.param("defaults: {llm: {top_p: .nan}}\n", "defaults.llm.top_p", id="top_p"),
    ],
)
def test_non_finite_number_in_a_workflow(
    cli: RunCli, write: WriteFile, lines: str, key: str
) -> None:
    path = write(MOCK_WORKFLOW.replace("agents:\n", lines + "agents:\n"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:3:" in result.stdout
    assert f"{key} must be a finite number" in result.stdout


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        pytest.param(
            "    llm: {provider: mock, model: gpt-4o-mini, params: {penalty: .inf}}\n",
            "agents.a.llm.params: the number at penalty must be finite",
            id="llm-params",
        ),
        pytest.param(
            "    llm: {provider: mock, model: gpt-4o-mini}\n"
            "    output: {format: json, schema: {type: number, maximum: .inf}}\n",
            "agents.a.output.schema: the number at maximum must be finite",
            id="schema",
        ),
    ],
)
def test_non_finite_number_in_a_free_form_value(
    cli: RunCli, write: WriteFile, lines: str, message: str
) -> None:
    path = write(MOCK_WORKFLOW.replace("    llm: {provider: mock, model: gpt-4o-mini}\n", lines))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert message in result.stdout


@pytest.mark.parametrize(
    ("how", "message"),
    [
        pytest.param("default", "inputs.n.default: the number must be finite", id="default"),
        pytest.param("-i", "-i n: input 'n' must be a finite number", id="option"),
        pytest.param("file", "input 'n' must be a finite number", id="inputs-file"),
    ],
)
def test_non_finite_input(cli: RunCli, write: WriteFile, how: str, message: str) -> None:
    declared = "{type: number, default: .nan}" if how == "default" else "{type: number}"
    path = write(
        MOCK_WORKFLOW.replace("agents:\n", f"inputs:\n  n: {declared}\nagents:\n").replace(
            "prompt: hi", "prompt: '{{ inputs.n }}'"
        )
    )
    args: list[str | Path] = ["run", path, "--mock"]
    if how == "-i":
        args += ["-i", "n=.inf"]
    elif how == "file":
        args += ["--inputs-file", write("n: -.inf\n", "in.yaml")]
    result = cli(*args)
    refused_before_any_call(result)
    assert message in result.stderr


def test_more_retries_than_a_float_can_count(cli: RunCli, write: WriteFile) -> None:
    """Past 1,024 retries the backoff's 2 ** n no longer converts to a float."""
    path = write(
        "version: 1\nname: t\nagents:\n  a:\n"
        "    llm: {provider: mock, model: gpt-4o-mini, params: {reply: not json}}\n"
        "    prompt: hi\n    output: {format: json}\n"
        "    retry: {max_retries: 1100, base_delay: 0, max_delay: 0}\n"
    )
    result = cli("run", path, "--mock", "--budget", "1000", env={"DEFAULT_AGENT_BUDGET": "none"})
    assert result.exit_code == 1, result.stderr
    assert "the reply is not valid JSON" in result.stderr
    assert "internal error" not in result.stderr


# -- empty means unset ----------------------------------------------------------------------


@pytest.mark.parametrize("blank", [pytest.param("", id="empty"), pytest.param("  ", id="blank")])
@pytest.mark.parametrize("variable", sorted(ENVIRONMENT_VARIABLES))
def test_blank_variable_means_unset(cli: RunCli, variable: str, blank: str) -> None:
    default = cli("config", "show", "-f", "json").stdout
    result = cli("config", "show", "-f", "json", env={variable: blank})
    assert result.exit_code == 0, result.stderr
    key = ".".join(ENVIRONMENT_VARIABLES[variable])
    shown = json.loads(result.stdout)[key]
    assert shown["value"] == json.loads(default)[key]["value"]
    assert shown["source"] == f"default; env {variable} is empty: ignored"


def test_blank_rate_limit_keeps_the_limit(cli: RunCli, write: WriteFile) -> None:
    """An unset compose variable (RATE_LIMIT_RPM=) must not lift the limit: the
    config file's value applies, and .env's under an empty real variable."""
    config = write("rate_limiting: {requests_per_minute: 20}\n", "c.yaml")
    write("RATE_LIMIT_RPH=\nRATE_LIMIT_RPD=500\n", ".env")
    env = {"RATE_LIMIT_RPM": "", "RATE_LIMIT_RPD": " "}
    result = cli("config", "show", "-f", "json", "-c", config, env=env)
    shown = json.loads(result.stdout)
    assert shown["rate_limiting.requests_per_minute"] == {
        "value": 20,
        "source": f"{config}:1; env RATE_LIMIT_RPM is empty: ignored",
    }
    assert shown["rate_limiting.requests_per_hour"] == {
        "value": 3000,
        "source": "default; .env:1 RATE_LIMIT_RPH is empty: ignored",
    }
    assert shown["rate_limiting.requests_per_day"] == {
        "value": 500,
        "source": ".env:2 RATE_LIMIT_RPD",
    }
    text = cli("config", "show", "-c", config, env=env).stdout
    assert "(default; .env:1 RATE_LIMIT_RPH is empty: ignored)" in text


@pytest.mark.parametrize(
    "variable",
    [CONFIG_FILE_VARIABLE, MOCK_LATENCY_VARIABLE, *sorted(BUILTIN_URL_VARIABLES.values())],
)
def test_other_blank_variables_mean_unset(cli: RunCli, write: WriteFile, variable: str) -> None:
    result = cli("run", write(MOCK_WORKFLOW), "--mock", env={variable: "  "})
    assert result.exit_code == 0, result.stderr


def test_blank_serve_url_means_the_local_store(cli: RunCli) -> None:
    result = cli("status", "-f", "json", env={"AOE_SERVE_URL": "  "})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["source"].endswith("state.db")


@pytest.mark.subprocess
def test_blank_api_token_is_no_token(tmp_path: Path) -> None:
    """A blank AOE_API_TOKEN must not guard a service bound beyond this machine."""
    code, output = aoe(
        ["serve", "--host", "0.0.0.0", "--port", "0"], tmp_path, env={"AOE_API_TOKEN": "  "}
    )
    assert code == 2, output
    assert "needs a bearer token" in output


def test_blank_api_key_is_a_missing_key(cli: RunCli, write: WriteFile, fake: FakeProvider) -> None:
    env = {"OPENAI_API_KEY": "   ", "OPENAI_BASE_URL": fake.openai_url}
    result = cli("run", write(OPENAI_WORKFLOW), env=env)
    refused_before_any_call(result)
    assert "no API key for provider 'openai': set OPENAI_API_KEY" in result.stderr
    assert fake.received == []


# -- base URLs -----------------------------------------------------------------------------------


BAD_URLS = [
    pytest.param("ftp://x", id="ftp"),
    pytest.param("not a url", id="words"),
    pytest.param("localhost:8000/v1", id="no-scheme"),
    pytest.param("http://", id="no-host"),
    pytest.param("https:///v1", id="empty-host"),
    pytest.param("http://host:99999/v1", id="bad-port"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("http://host/v1\nX-Evil: 1", id="newline"),
]


@pytest.mark.parametrize("url", BAD_URLS)
@pytest.mark.parametrize("variable", sorted(BUILTIN_URL_VARIABLES.values()))
def test_bad_base_url_variable(cli: RunCli, write: WriteFile, variable: str, url: str) -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_API_KEY": OPENAI_KEY, variable: url}
    result = cli("run", write(OPENAI_WORKFLOW), env=env)
    refused_before_any_call(result)
    assert f"environment: error: {variable}=" in result.stderr
    assert "must be an http:// or https:// URL" in result.stderr


def test_bad_base_url_in_dotenv(cli: RunCli, write: WriteFile) -> None:
    write("OPENAI_BASE_URL=ftp://x\n", ".env")
    result = cli("run", write(OPENAI_WORKFLOW), env={"OPENAI_API_KEY": OPENAI_KEY})
    refused_before_any_call(result)
    assert ".env:1: error: OPENAI_BASE_URL='ftp://x': must be an http:// or https://" in (
        result.stderr
    )


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_base_url_of_a_declared_provider(cli: RunCli, write: WriteFile, url: str) -> None:
    config = write(f"providers:\n  local:\n    base_url: {json.dumps(url)}\n", "c.yaml")
    result = cli("config", "show", "-c", config)
    assert result.exit_code == 2
    assert f"{config}:3:15: error: providers.local.base_url: must be an http:// or https://" in (
        result.stderr
    )


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8000/v1", id="loopback"),
        pytest.param("https://user:pw@proxy.example/v1", id="credentials"),
        pytest.param("HTTPS://API.EXAMPLE.COM", id="upper-case"),
        pytest.param("http://[::1]:8000/v1", id="ipv6"),
    ],
)
def test_good_base_urls(cli: RunCli, url: str) -> None:
    assert cli("config", "show", env={"OPENAI_BASE_URL": url}).exit_code == 0


# -- files that are not regular files, and files too large to read -------------------------


def aoe(
    args: list[str], cwd: Path, *, env: dict[str, str] | None = None, limit_memory: int = 0
) -> tuple[int, str]:
    """``aoe ARGS`` in a child process, so that a hang fails the test instead of
    hanging it: the exit code and the output. ``limit_memory`` caps its address
    space (bytes)."""

    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_memory, limit_memory))

    done = subprocess.run(
        [sys.executable, "-m", "aoe", *args],
        cwd=cwd,
        env=child_env(env or {}),
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=cap if limit_memory else None,
        check=False,
    )
    return done.returncode, done.stderr + done.stdout


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")


@needs_fifo
@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        pytest.param(
            ["config", "show", "--config", "pipe"],
            {},
            "pipe: error: is a named pipe (FIFO), not a regular file",
            id="--config",
        ),
        pytest.param(
            ["config", "show"],
            {"AOE_CONFIG": "pipe"},
            "pipe: error: is a named pipe (FIFO), not a regular file (named by env AOE_CONFIG)",
            id="AOE_CONFIG",
        ),
        pytest.param(
            ["run", "wf.yaml", "--mock", "--inputs-file", "pipe"],
            {},
            "pipe: error: is a named pipe (FIFO), not a regular file",
            id="--inputs-file",
        ),
        pytest.param(
            ["validate", "pipe", "wf.yaml"],
            {},
            "pipe: error: is a named pipe (FIFO), not a regular file",
            id="workflow",
        ),
        pytest.param(
            ["validate", "prompt.yaml"],
            {},
            "prompt.yaml:6:18: error: 'pipe' is a named pipe (FIFO), not a regular file",
            id="prompt_file",
        ),
        pytest.param(
            ["validate", "system.yaml"],
            {},
            "system.yaml:7:18: error: 'pipe' is a named pipe (FIFO), not a regular file",
            id="system_file",
        ),
        pytest.param(
            ["validate", "schema.yaml"],
            {},
            "schema.yaml:7:",
            id="schema_file",
        ),
    ],
)
@pytest.mark.subprocess
def test_fifo_does_not_hang(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "wf.yaml").write_text(MOCK_WORKFLOW, encoding="utf-8")
    for name, line in (
        ("prompt", "    prompt_file: pipe\n"),
        ("system", "    prompt: hi\n    system_file: pipe\n"),
        ("schema", "    prompt: hi\n    output: {format: json, schema_file: pipe}\n"),
    ):
        text = MOCK_WORKFLOW.replace("    prompt: hi\n", line)
        (tmp_path / f"{name}.yaml").write_text(text, encoding="utf-8")
    code, output = aoe(args, tmp_path, env=env)
    assert code == 2, output
    assert expected in output


@needs_fifo
@pytest.mark.subprocess
def test_fifo_as_dotenv_is_passed_over(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".env")
    (tmp_path / "wf.yaml").write_text(MOCK_WORKFLOW, encoding="utf-8")
    code, output = aoe(["validate", "wf.yaml"], tmp_path)
    assert code == 0, output


@pytest.mark.parametrize(
    ("option", "target", "expected"),
    [
        pytest.param(
            "--config",
            "folder",
            "folder: error: is a directory, not a regular file",
            id="config-folder",
        ),
        pytest.param(
            "--config",
            "/dev/zero",
            "/dev/zero: error: is a device, not a regular file",
            id="config-device",
        ),
        pytest.param(
            "--inputs-file", "/dev/zero", "/dev/zero: error: is a device", id="inputs-device"
        ),
    ],
)
def test_folder_or_device_as_a_file(
    cli: RunCli, write: WriteFile, tmp_path: Path, option: str, target: str, expected: str
) -> None:
    (tmp_path / "folder").mkdir()
    result = cli("run", write(MOCK_WORKFLOW), "--mock", option, target)
    refused_before_any_call(result)
    assert expected in result.stderr


def test_folder_as_a_prompt_file(cli: RunCli, write: WriteFile, tmp_path: Path) -> None:
    (tmp_path / "p.txt").mkdir()
    path = write(MOCK_WORKFLOW.replace("prompt: hi", "prompt_file: p.txt"))
    result = cli("validate", path)
    assert result.exit_code == 2
    assert f"{path}:6:18: error: 'p.txt' is a directory, not a regular file" in result.stdout


def test_folder_named_dotenv_is_passed_over(cli: RunCli, write: WriteFile, tmp_path: Path) -> None:
    """A virtualenv is often called .env."""
    (tmp_path / ".env").mkdir()
    assert cli("validate", write(MOCK_WORKFLOW)).exit_code == 0


@pytest.mark.parametrize(
    "field",
    [
        pytest.param("prompt_file: big.txt", id="prompt_file"),
        pytest.param("prompt: hi\n    system_file: big.txt", id="system_file"),
    ],
)
@pytest.mark.subprocess
def test_huge_sparse_file_is_not_read(tmp_path: Path, field: str) -> None:
    """3 GB that stat says are there: refused by their size, not read. With its
    address space capped at 1 GiB, aoe could not even hold the file."""
    with open(tmp_path / "big.txt", "wb") as f:
        f.truncate(3 * 1024**3)
    text = MOCK_WORKFLOW.replace("prompt: hi", field)
    (tmp_path / "wf.yaml").write_text(text, encoding="utf-8")
    code, output = aoe(["validate", "wf.yaml"], tmp_path, limit_memory=1024**3)
    assert code == 2, output
    assert "error: 'big.txt' is larger than 1 MiB" in output


# -- where keys go -----------------------------------------------------------------------------


def test_base_url_from_dotenv_is_said_at_every_run(
    cli: RunCli, write: WriteFile, fake: FakeProvider, tmp_path: Path
) -> None:
    write(f"OPENAI_BASE_URL={fake.openai_url}\n", ".env")
    path = write(OPENAI_WORKFLOW)
    for _ in range(2):
        result = cli("run", path, "--no-cache", env={"OPENAI_API_KEY": OPENAI_KEY})
        assert result.exit_code == 0, result.stderr
        assert (
            f"warning: OPENAI_BASE_URL is set by {tmp_path / '.env'} (line 1): provider "
            f"'openai' sends its key (OPENAI_API_KEY) to {fake.openai_url}"
        ) in result.stderr
    assert len(fake.received) == 2
    json_lines = cli("run", path, "--log-format", "json", env={"OPENAI_API_KEY": OPENAI_KEY})
    [warning] = [
        json.loads(line) for line in json_lines.stderr.splitlines() if '"level": "WARNING"' in line
    ]
    assert "OPENAI_BASE_URL is set by" in warning["message"]
    assert OPENAI_KEY not in json_lines.stderr + result.stderr


def test_base_url_from_the_environment_is_not_warned_about(
    cli: RunCli, write: WriteFile, fake: FakeProvider
) -> None:
    env = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": fake.openai_url}
    result = cli("run", write(OPENAI_WORKFLOW), env=env)
    assert result.exit_code == 0
    assert "warning" not in result.stderr


def test_config_named_by_dotenv_is_said(
    cli: RunCli, write: WriteFile, fake: FakeProvider, tmp_path: Path
) -> None:
    config = write(
        f"providers:\n  gw:\n    base_url: {fake.openai_url}\n    api_key_env: GW_KEY\n"
        "    default_price: {input: 0, output: 0}\n",
        "c.yaml",
    )
    write(f"AOE_CONFIG={config}\n", ".env")
    path = write(OPENAI_WORKFLOW.replace("provider: openai", "provider: gw"))
    result = cli("run", path, env={"GW_KEY": OPENAI_KEY})
    assert result.exit_code == 0, result.stderr
    assert (
        f"the engine config {config} is named by AOE_CONFIG in {tmp_path / '.env'} (line 1), "
        f"and provider 'gw' sends its key (GW_KEY) to {fake.openai_url}"
    ) in result.stderr
    shown = json.loads(cli("config", "show", "-f", "json").stdout)
    assert shown["providers.gw.key_sent_to"] == {
        "value": f"GW_KEY -> {fake.openai_url}",
        "source": f"{config}:3; the config file is named by .env:1 AOE_CONFIG, check it",
    }


def test_config_show_says_where_each_key_goes(cli: RunCli, write: WriteFile) -> None:
    write("OPENAI_BASE_URL=http://elsewhere.example/v1\n", ".env")
    config = write(
        "providers:\n  local:\n    base_url: http://u:secret@localhost:11434/v1\n"
        "    api_key_env: null\n",
        "c.yaml",
    )
    env = {"OPENAI_API_KEY": OPENAI_KEY, "ANTHROPIC_BASE_URL": "https://proxy.example"}
    result = cli("config", "show", "-f", "json", "-c", config, env=env)
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["providers.openai.key_sent_to"] == {
        "value": "OPENAI_API_KEY -> http://elsewhere.example/v1",
        "source": ".env:1 OPENAI_BASE_URL; a .env file chose it, check it",
    }
    assert shown["providers.anthropic.key_sent_to"] == {
        "value": "ANTHROPIC_API_KEY -> https://proxy.example",
        "source": "env ANTHROPIC_BASE_URL",
    }
    assert shown["providers.local.key_sent_to"] == {
        "value": "(no key) -> http://u:********@localhost:11434/v1",
        "source": f"{config}:3",
    }
    assert "providers.mock.key_sent_to" not in shown
    text = cli("config", "show", "-c", config, env=env).stdout
    assert OPENAI_KEY not in text + result.stdout
    assert "secret" not in text + result.stdout


def test_config_show_names_the_vendors_default_urls(cli: RunCli) -> None:
    shown = json.loads(cli("config", "show", "-f", "json").stdout)
    assert shown["providers.openai.key_sent_to"] == {
        "value": "OPENAI_API_KEY -> https://api.openai.com/v1",
        "source": "default",
    }
    assert shown["providers.anthropic.base_url"] == {
        "value": "https://api.anthropic.com",
        "source": "default",
    }


@pytest.mark.parametrize(
    "variable",
    [
        pytest.param("AOE_API_TOKEN", id="aoe-token"),
        pytest.param("AOE_CONFIG", id="aoe-config"),
        pytest.param("REDIS_PASSWORD", id="redis"),
        pytest.param("RATE_LIMIT_RPM", id="aoe-setting"),
        pytest.param("HOME", id="HOME"),
        pytest.param("DATABASE_URL", id="url"),
        pytest.param("aoe_api_token", id="lower-case-aoe"),
    ],
)
def test_api_key_env_names_only_keys(
    cli: RunCli, write: WriteFile, fake: FakeProvider, variable: str
) -> None:
    config = write(
        f"providers:\n  gw:\n    base_url: {fake.openai_url}\n    api_key_env: {variable}\n"
        "    default_price: {input: 0, output: 0}\n",
        "c.yaml",
    )
    path = write(OPENAI_WORKFLOW.replace("provider: openai", "provider: gw"))
    result = cli("run", path, "-c", config, env={variable: "the-value"})
    refused_before_any_call(result)
    assert f"{config}:4:18: error: providers.gw.api_key_env: {variable} " in result.stderr
    assert fake.received == []


@pytest.mark.parametrize("variable", ["VLLM_API_KEY", "HF_TOKEN", "GW_KEY", "OPENAI_API_KEY"])
def test_api_key_env_may_name_a_key(cli: RunCli, write: WriteFile, variable: str) -> None:
    config = write(
        f"providers:\n  gw:\n    base_url: http://localhost:1/v1\n    api_key_env: {variable}\n",
        "c.yaml",
    )
    assert cli("config", "show", "-c", config).exit_code == 0
