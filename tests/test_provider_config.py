"""Providers as users have them: a server's own prices and model names.

Issue 15: a zero-priced local provider serving `gpt-4o-mini` was charged
OpenAI's prices (the price table beat the provider's `default_price`), the
"no price" error never said `default_price`, and a workflow could not run
unchanged against a server whose models have other names.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunCli, WriteFile
from tests.fakeserver import FakeProvider, Reply


def config(write: WriteFile, fake: FakeProvider, *lines: str) -> Any:
    text = "\n".join(["providers:", "  local:", f"    base_url: {fake.openai_url}", *lines])
    return write(text + "\n", "engine.yaml")


def workflow(
    write: WriteFile, model: str = "gpt-4o-mini", budget: str = "5.0", provider: str = "local"
) -> Any:
    return write(
        f"version: 1\nname: w\ncost_budget: {budget}\nagents:\n"
        f"  a: {{prompt: hi, llm: {{provider: {provider}, model: {model}, max_tokens: 1500}}}}\n"
    )


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, dict[str, Any], str]:
    result = cli("run", *args, "--output", "-", "--no-cache", env=env)
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


def test_a_free_local_server_is_free_whatever_its_models_are_called(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda request: Reply(text="hi", input_tokens=1000, output_tokens=1000)
    engine = config(write, fake, "    default_price: {input: 0, output: 0}")
    code, results, stderr = run(cli, provider_env, workflow(write), "--config", engine)
    assert code == 0, stderr
    assert results["cost_usd"] == 0  # not gpt-4o-mini's price at OpenAI


@pytest.mark.parametrize(
    ("lines", "per_thousand"),
    [
        pytest.param(
            [
                "    default_price: {input: 0, output: 0}",
                "    prices: {gpt-4o-mini: {input: 0.5, output: 0.5}}",
            ],
            0.5,
            id="by-the-workflows-name",
        ),
        pytest.param(
            [
                "    models: {gpt-4o-mini: gemma-3-270m}",
                "    prices: {gemma-3-270m: {input: 0.25, output: 0.25}}",
            ],
            0.25,
            id="by-the-servers-name",
        ),
        pytest.param([], 0.15 / 1000 + 0.6 / 1000, id="the-table-otherwise"),
    ],
)
def test_a_providers_own_prices_come_before_the_table(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    lines: list[str],
    per_thousand: float,
) -> None:
    fake.respond = lambda request: Reply(text="hi", input_tokens=1000, output_tokens=1000)
    engine = config(write, fake, *lines)
    code, results, stderr = run(cli, provider_env, workflow(write), "--config", engine)
    assert code == 0, stderr
    expected = 2 * per_thousand if lines else per_thousand  # the table: $0.15 + $0.60 per 1M
    assert results["cost_usd"] == pytest.approx(expected)


def test_a_workflow_runs_unchanged_against_a_server_with_other_model_names(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda request: Reply(text="hi")
    engine = config(
        write,
        fake,
        "    models: {gpt-4o-mini: gemma-3-270m}",
        "    default_price: {input: 0, output: 0}",
    )
    code, results, stderr = run(cli, provider_env, workflow(write), "--config", engine)
    assert code == 0, stderr
    [request] = fake.received
    assert request.model == "gemma-3-270m"
    agent = results["agents"]["a"]
    assert agent["model"] == "gpt-4o-mini"  # as the workflow names it
    assert agent["answered_by"]["model"] == "gemma-3-270m"  # as the server does


def test_the_no_price_error_suggests_a_free_server_its_default_price(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    engine = config(write, fake)
    result = cli("validate", workflow(write, model="gemma-3-270m"), "--config", engine)
    assert result.exit_code == 2
    assert "model 'gemma-3-270m' has no price" in result.stdout + result.stderr
    assert "give provider 'local' default_price: {input: 0, output: 0}" in (
        result.stdout + result.stderr
    )


def test_a_run_is_resumed_with_the_engine_config_it_was_started_with(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 15: `aoe resume RUN`, as printed, refused a run started with
    `--config` (12 "unknown provider 'local'" errors). The record keeps the
    config file; a resume without --config (or AOE_CONFIG) uses it, and says so."""
    from tests.fakeserver import Fail

    engine = config(write, fake, "    default_price: {input: 0, output: 0}")
    fake.script(Fail(400, "not now"))
    code, results, _ = run(cli, provider_env, workflow(write), "--config", engine)
    assert code == 1
    run_id = results["run_id"]
    fake.respond = lambda request: Reply(text="done")
    resumed = cli("resume", run_id, "--output", "-", env=provider_env)
    assert resumed.exit_code == 0, resumed.stderr
    assert f"using the engine config the run was started with: {engine}" in resumed.stderr
    assert json.loads(resumed.stdout)["agents"]["a"]["output"] == "done"
    # named now, the config named wins; a config that is gone is said, not used
    engine.unlink()
    fake.reset()
    fake.script(Fail(400, "not now"))
    other = config(write, fake, "    default_price: {input: 0, output: 0}")
    code, results, _ = run(cli, provider_env, workflow(write), "--config", other)
    other.unlink()
    gone = cli("resume", results["run_id"], env=provider_env)
    assert gone.exit_code == 2
    assert f"started with the engine config {other}, which is gone" in gone.stderr
    assert "unknown provider 'local'" in gone.stderr


def test_the_printed_resume_command_names_the_config_given() -> None:
    from aoe.cli.run import resume_command
    from aoe.config.settings import load_settings

    plain = load_settings(environ={})
    assert resume_command("r1", plain) == "aoe resume r1"
    given = plain._replace(config_named_by="flag --config", config_file="my configs/e.yaml")
    assert resume_command("r1", given) == "aoe resume r1 --config 'my configs/e.yaml'"


def test_a_common_server_is_one_line_of_config(write: WriteFile) -> None:
    from aoe.config.settings import load_settings
    from aoe.errors import ConfigInvalid

    path = write(
        "providers:\n"
        "  local: {preset: ollama}\n"
        "  box: {preset: vllm, base_url: 'http://gpu-box:8000/v1', api_key_env: VLLM_API_KEY}\n"
        "  router: {preset: openrouter}\n",
        "engine.yaml",
    )
    settings = load_settings(str(path), environ={})
    assert settings.base_url("local") == "http://localhost:11434/v1"
    assert settings.api_key_variable("local") is None  # a local server needs no key
    assert settings.price_of("local", "gpt-4o-mini") == (0.0, 0.0)  # and costs nothing
    assert settings.base_url("box") == "http://gpu-box:8000/v1"  # what is given goes over it
    assert settings.api_key_variable("box") == "VLLM_API_KEY"
    assert settings.base_url("router") == "https://openrouter.ai/api/v1"
    assert settings.api_key_variable("router") == "OPENROUTER_API_KEY"
    assert settings.price_of("router", "gpt-4o-mini") == settings.prices.lookup("gpt-4o-mini")
    bad = write("providers:\n  local: {preset: olama}\n", "bad.yaml")
    with pytest.raises(ConfigInvalid) as refused:
        load_settings(str(bad), environ={})
    assert "did you mean 'ollama'" in str(refused.value)


def test_the_vendors_providers_may_be_declared_to_run_workflows_elsewhere(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """A config that points `openai` and `anthropic` at other servers, with the
    server's model names, no keys and no prices: a workflow written for the
    vendors runs against it unchanged (the shipped config/local.yaml's way)."""
    engine = write(
        "providers:\n"
        "  openai:\n"
        f"    base_url: {fake.openai_url}\n"
        "    api_key_env: null\n"
        "    models: {gpt-4o-mini: gemma-3-270m}\n"
        "    default_price: {input: 0, output: 0}\n"
        "  anthropic:\n"
        f"    base_url: {fake.anthropic_url}\n"
        "    api_key_env: null\n"
        "    models: {claude-haiku-4-5: gemma-3-270m}\n"
        "    default_price: {input: 0, output: 0}\n",
        "local.yaml",
    )
    path = write(
        "version: 1\nname: both\ncost_budget: 0.01\nagents:\n"
        "  a: {prompt: hi, llm: {provider: openai, model: gpt-4o-mini, max_tokens: 50}}\n"
        "  b: {prompt: hi, llm: {provider: anthropic, model: claude-haiku-4-5, max_tokens: 50}}\n"
    )
    fake.respond = lambda request: Reply(text="local answer", output_tokens=20)
    env = {k: v for k, v in provider_env.items() if "API_KEY" not in k and "BASE_URL" not in k}
    code, results, stderr = run(cli, env, path, "--config", engine)
    assert code == 0, stderr
    assert sorted((r.api, r.model) for r in fake.received) == [
        ("anthropic", "gemma-3-270m"),
        ("openai", "gemma-3-270m"),
    ]
    assert all(
        "authorization" not in r.headers or "no-key" in r.headers["authorization"]
        for r in fake.received
    )
    assert results["cost_usd"] == 0
    # the environment's base URL still goes over the config's
    other = FakeProvider()
    try:
        other.respond = lambda request: Reply(text="from the environment")
        code, results, stderr = run(
            cli, {**env, "OPENAI_BASE_URL": other.openai_url}, path, "--config", engine
        )
        assert code == 0, stderr
        assert [r.api for r in other.received] == ["openai"]
    finally:
        other.close()


def test_a_refused_connection_costs_nothing_but_a_dropped_one_its_reservation(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 15: a connection refused (nothing sent, nothing billed) was charged
    its reservation, as a call cut off after it was sent must be."""
    import socket

    from tests.fakeserver import Drop

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    engine = write(
        "providers:\n  gone:\n"
        f"    base_url: http://127.0.0.1:{port}/v1\n"
        "    default_price: {input: 1, output: 1}\n"
        "  local:\n"
        f"    base_url: {fake.openai_url}\n"
        "    default_price: {input: 1, output: 1}\n",
        "engine.yaml",
    )
    for provider in ("gone", "local"):
        fake.script(Drop())
        path = write(
            "version: 1\nname: w\ncost_budget: 5\nagents:\n"
            f"  a: {{prompt: hi, llm: {{provider: {provider}, model: m, max_tokens: 100}},"
            " retry: {max_retries: 0}}\n"
        )
        code, results, stderr = run(cli, provider_env, path, "--config", engine)
        assert code == 1, stderr
        [attempt] = results["agents"]["a"]["attempts"]
        if provider == "gone":
            assert "cannot reach" in attempt["error"]
            assert results["cost_usd"] == 0
        else:  # sent, and no answer: it may have been billed
            assert results["cost_usd"] == pytest.approx(attempt["reserved_usd"])
            assert results["cost_usd"] > 0


def test_calls_waiting_for_a_slot_hold_no_budget(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """One call at a time (concurrent_requests 1), three agents ready at once, a
    budget for one worst case and a half: each reserves its worst case only
    when its turn comes, after the one before settled for what it used, so all
    three run. (Reserved while waiting, the second was refused at once.)"""
    fake.respond = lambda request: Reply(text="ok", output_tokens=10)
    path = write(
        "version: 1\nname: w\ncost_budget: 0.015\nagents:\n"
        + "".join(
            f"  a{i}: {{prompt: hi, llm: {{provider: openai, model: gpt-4o, max_tokens: 1000}}}}\n"
            for i in range(3)
        )
    )
    env = {**provider_env, "RATE_LIMIT_CONCURRENT": "1"}
    code, results, stderr = run(cli, env, path)
    assert code == 0, stderr
    assert [a["state"] for a in results["agents"].values()] == ["completed"] * 3
    assert fake.max_in_flight == 1
    reserved = results["agents"]["a0"]["attempts"][0]["reserved_usd"]
    assert 2 * reserved > 0.015  # two worst cases at once would not have fit


def test_a_base_url_without_v1_gets_a_hint(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 15: `openai answered HTTP 404: Error code: 404`, no URL, no hint."""
    from tests.fakeserver import LLAMA

    fake.quirks = LLAMA
    engine = write(
        f"providers:\n  local:\n    base_url: {fake.url}\n"
        "    default_price: {input: 0, output: 0}\n",
        "engine.yaml",
    )
    path = write(
        "version: 1\nname: w\nagents:\n"
        "  a: {prompt: hi, llm: {provider: local, model: m, max_tokens: 10}}\n"
    )
    code, results, stderr = run(cli, provider_env, path, "--config", engine)
    assert code == 1, stderr
    error = results["agents"]["a"]["error"]
    assert "HTTP 404" in error
    assert f"from {fake.url}/chat/completions" in error
    assert f"is the base_url {fake.url}/v1?" in error


def test_a_failed_foreach_agent_fails_once_and_its_other_items_stop(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 15: one item failed for good, the agent was reported failed, and
    then failed again while its other item went on retrying (and paying)."""
    from tests.fakeserver import Fail

    def respond(request: Any) -> Any:
        if "item x" in request.prompt:
            return Fail(400, "bad x", delay=0.2)  # after y's first failure
        return Fail(500, "busy")

    fake.respond = respond
    path = write(
        "version: 1\nname: fe\nagents:\n  many:\n"
        "    llm: {provider: openai, model: gpt-4o-mini, max_tokens: 20}\n"
        "    prompt: 'item {{ item }}'\n"
        "    foreach: \"['x', 'y']\"\n"
        "    retry: {max_retries: 5, base_delay: 0.5, max_delay: 0.5, jitter: false}\n"
    )
    result = cli("run", path, "--log-format", "text", "--no-cache", env=provider_env)
    assert result.exit_code == 1
    assert result.stderr.count("many: failed") == 1, result.stderr
    assert "bad x" in result.stderr
    assert sorted(r.prompt for r in fake.received) == ["item x", "item y"]  # y not again


def azure_config(write: WriteFile, fake: FakeProvider, *lines: str) -> Any:
    text = "\n".join(
        ["providers:", "  azure:", "    type: azure", f"    base_url: {fake.url}", *lines]
    )
    return write(text + "\n", "engine.yaml")


def test_azure_openai_is_called_through_the_sdks_azure_client(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Issue 15: Azure OpenAI, its endpoint, deployments and api-version; the
    workflow's model names as they are, priced as the models they deploy."""
    from dataclasses import replace

    fake.quirks = replace(fake.quirks, deployments=frozenset({"mini-prod", "everything"}))
    fake.respond = lambda request: Reply(text="from azure", input_tokens=1000, output_tokens=1000)
    engine = azure_config(
        write, fake, "    models: {gpt-4o-mini: mini-prod}", "    deployment: everything"
    )
    path = write(
        "version: 1\nname: w\ncost_budget: 1.0\nagents:\n"
        "  a: {prompt: hi, llm: {provider: azure, model: gpt-4o-mini, max_tokens: 1500}}\n"
        "  b: {prompt: hi, llm: {provider: azure, model: gpt-4o, max_tokens: 1500}}\n"
    )
    key = "azure-key-0123456789abcdef"
    code, results, stderr = run(
        cli, {**provider_env, "AZURE_OPENAI_API_KEY": key}, path, "--config", engine
    )
    assert code == 0, stderr
    paths = sorted(r.path for r in fake.received)
    assert paths == [
        "/openai/deployments/everything/chat/completions?api-version=2024-10-21",
        "/openai/deployments/mini-prod/chat/completions?api-version=2024-10-21",
    ]
    for request in fake.received:
        assert request.headers["api-key"] == key  # Azure's header, its own variable
        assert request.body["max_completion_tokens"] == 1500  # Azure keeps OpenAI's limit
        assert request.body["stream_options"] == {"include_usage": True}
    agents = results["agents"]
    assert agents["a"]["output"] == "from azure"
    # priced by the workflow's model names: the models the deployments serve
    assert agents["a"]["cost_usd"] == pytest.approx((0.15 + 0.6) / 1000)
    assert agents["b"]["cost_usd"] == pytest.approx((2.5 + 10.0) / 1000)
    assert key not in json.dumps(results) + stderr


def test_azure_openai_names_the_api_version_and_a_missing_deployment(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    from dataclasses import replace

    fake.quirks = replace(fake.quirks, deployments=frozenset({"mini-prod"}))
    engine = azure_config(write, fake, '    api_version: "2025-04-01-preview"')
    env = {**provider_env, "AZURE_OPENAI_API_KEY": "azure-key-0123456789abcdef"}
    path = workflow(write, budget="1.0", provider="azure")
    code, results, stderr = run(cli, env, path, "--config", engine)
    assert code == 1, stderr
    [request] = fake.received  # a 404 is not retried
    assert request.path.endswith("?api-version=2025-04-01-preview")
    error = results["agents"]["a"]["error"]
    assert "DeploymentNotFound" in error or "deployment for this resource does not exist" in error
    assert "map the workflow's models to your deployments" in error


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["  azure:", "    type: azure"], "needs a base_url: its resource's endpoint"),
        (
            ["  local:", "    base_url: http://127.0.0.1:9/v1", "    api_version: '2024-10-21'"],
            "api_version only for type: azure",
        ),
    ],
)
def test_azure_settings_are_checked(
    cli: RunCli, write: WriteFile, lines: list[str], message: str
) -> None:
    engine = write("\n".join(["providers:", *lines]) + "\n", "engine.yaml")
    result = cli("config", "show", "--config", engine)
    assert result.exit_code == 2
    assert message in result.stdout + result.stderr
