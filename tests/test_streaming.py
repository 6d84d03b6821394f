"""Replies streamed from servers that do not keep the limits they are sent.

Issue 15, measured on real servers: llama-cpp-python reads only `max_tokens`
and streams without usage; a proxy passed `max_completion_tokens` through to
it; a workflow with `max_tokens: 20` and a $0.002 budget got 2,035 tokens and
ended ten times over its budget. Here the official SDKs talk to the fake
server with those quirks (tests/fakeserver.py `Quirks`), and the budget is
judged by what aoe counted and what the server sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aoe.providers.openai import token_parameter_for
from tests.conftest import RunCli, WriteFile
from tests.fakeserver import LLAMA, UNLIMITED, FakeProvider, Quirks, Reply

LONG = "word " * 2_000  # about 2,500 tokens at four characters a token


def workflow(write: WriteFile, llm: str, **extra: str) -> Any:
    lines = [
        "version: 1",
        "name: limits",
        "cost_budget: 0.002",
        "agents:",
        "  a:",
        "    prompt: Write at length.",
        f"    llm: {llm}",
        *(f"    {key}: {value}" for key, value in extra.items()),
    ]
    return write("\n".join(lines) + "\n")


def run(cli: RunCli, env: dict[str, str], *args: Any) -> tuple[int, dict[str, Any], str]:
    result = cli("run", *args, "--output", "-", "--no-cache", env=env)
    document = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.exit_code, document, result.stderr


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
def test_a_server_that_keeps_no_limit_is_cut_off_at_max_tokens(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    vendor: str,
) -> None:
    """The issue's case: 20 tokens asked, ~2,500 sent. aoe stops reading at 20:
    the reply is 20 pieces, marked cut off, its usage counted by aoe (the server
    sent none), and the run's spend stays within its budget."""
    fake.quirks = UNLIMITED
    fake.respond = lambda request: Reply(text=LONG)
    model = "gpt-4o" if vendor == "openai" else "claude-sonnet-4-5"
    path = workflow(write, f"{{provider: {vendor}, model: {model}, max_tokens: 20}}")
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    agent = results["agents"]["a"]
    assert agent["state"] == "completed"
    assert agent["output"] == LONG[: 20 * 4]  # twenty pieces of four characters
    assert agent["usage"]["output_tokens"] == 20
    assert agent["attempts"][-1]["finish_reason"] in ("length", "max_tokens")
    assert results["cost_usd"] <= 0.002
    [request] = fake.received
    assert request.body["stream"] is True


def test_a_compatible_server_is_sent_the_limit_it_reads(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """llama.cpp reads `max_tokens` only: sent that (it is not api.openai.com), it
    stops there itself; its stream has no usage, so aoe counts it."""
    fake.quirks = LLAMA
    fake.respond = lambda request: Reply(text=LONG)
    path = workflow(write, "{provider: openai, model: gpt-4o, max_tokens: 20}")
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    [request] = fake.received
    assert request.body["max_tokens"] == 20
    assert "max_completion_tokens" not in request.body
    agent = results["agents"]["a"]
    assert agent["attempts"][-1]["finish_reason"] == "length"  # the server's own word
    assert agent["usage"]["output_tokens"] == 20
    assert len(agent["output"]) == 80


def provider_config(write: WriteFile, fake: FakeProvider, **fields: str) -> Any:
    lines = [
        "providers:",
        "  local:",
        f"    base_url: {fake.openai_url}",
        "    default_price: {input: 0.01, output: 0.01}",
        *(f"    {key}: {value}" for key, value in fields.items()),
    ]
    return write("\n".join(lines) + "\n", "engine.yaml")


def test_a_reported_usage_over_max_tokens_is_the_providers_fault(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Not streamed (`stream: false`), nothing can stop a server that ignores the
    limit: its reply is a provider fault, named, billed as reported, and not
    asked again of the same server."""
    fake.quirks = UNLIMITED
    fake.respond = lambda request: Reply(text=LONG)
    config = provider_config(write, fake, stream="false")
    path = workflow(write, "{provider: local, model: gemma, max_tokens: 20}")
    code, results, stderr = run(cli, provider_env, path, "--config", config)
    assert code == 1, stderr
    [request] = fake.received  # not retried
    assert "stream" not in request.body
    agent = results["agents"]["a"]
    assert agent["state"] == "failed"
    assert "reported 2,500 output tokens for a reply limited to max_tokens 20" in agent["error"]
    assert "token_parameter" in agent["error"]
    assert agent["usage"]["output_tokens"] == 2_500  # billed as reported
    assert results["cost_usd"] == pytest.approx((2_500 + agent["usage"]["input_tokens"]) / 1e5)


def test_a_declared_provider_may_name_its_token_parameter(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.quirks = Quirks(honours=frozenset({"max_completion_tokens"}))
    fake.respond = lambda request: Reply(text=LONG)
    config = provider_config(write, fake, token_parameter="max_completion_tokens")
    path = workflow(write, "{provider: local, model: gemma, max_tokens: 20}")
    code, results, stderr = run(cli, provider_env, path, "--config", config)
    assert code == 0, stderr
    [request] = fake.received
    assert request.body["max_completion_tokens"] == 20
    assert "max_tokens" not in request.body
    assert results["agents"]["a"]["usage"]["output_tokens"] == 20  # reported by the server


def test_the_timeout_counts_from_the_last_piece(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """A reply that takes longer than the timeout in all, each piece within it,
    is not cut; one whose first piece is later than the timeout is."""
    fake.quirks = Quirks(piece=4, gap=0.15)  # ten pieces over 1.5 s
    fake.respond = lambda request: Reply(text="x" * 40)
    path = workflow(write, "{provider: openai, model: gpt-4o, max_tokens: 50}", timeout="0.6")
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    assert results["agents"]["a"]["output"] == "x" * 40
    fake.reset()
    fake.respond = lambda request: Reply(text="late", delay=1.0)
    path = workflow(
        write,
        "{provider: openai, model: gpt-4o, max_tokens: 50}",
        timeout="0.3",
        retry="{max_retries: 0}",
    )
    code, results, stderr = run(cli, provider_env, path)
    assert code == 1
    assert "no answer within the timeout of 0.3 s" in results["agents"]["a"]["error"]


def test_which_limit_each_server_reads() -> None:
    assert token_parameter_for(None) == "max_completion_tokens"  # the SDK's default: OpenAI
    assert token_parameter_for("https://api.openai.com/v1") == "max_completion_tokens"
    assert token_parameter_for("http://127.0.0.1:8080/v1") == "max_tokens"
    assert token_parameter_for("https://openrouter.ai/api/v1") == "max_tokens"
