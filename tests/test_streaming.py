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
    # visibly cut off, and visibly counted by aoe
    assert agent["truncated"] is True
    assert agent["attempts"][-1]["truncated"] is True
    assert agent["attempts"][-1]["usage_estimated"] is True


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


def test_a_streamed_reply_within_the_limit_stands_whatever_the_server_counts(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Measured through the LiteLLM proxy: the server behind it reports no usage,
    so the proxy counts the text with a tokenizer of its own (1,373 tokens for a
    reply of 800, cut there by the server). The reply kept the limit; the count
    is off: it stands, billed as reported, and aoe says so once. A server that
    sends many tokens a piece past the limit is still at fault."""
    fake.quirks = Quirks(piece=4)
    fake.respond = lambda request: Reply(text="word" * 800, output_tokens=1373)
    config = provider_config(write, fake)
    path = write(
        "version: 1\nname: w\ncost_budget: 1\nagents:\n"
        "  a: {prompt: one, llm: {provider: local, model: m, max_tokens: 800}}\n"
        "  b: {prompt: two, llm: {provider: local, model: m, max_tokens: 800}}\n"
    )
    code, results, stderr = run(cli, provider_env, path, "--config", config)
    assert code == 0, stderr
    for agent in results["agents"].values():
        assert agent["state"] == "completed"
        assert agent["usage"]["output_tokens"] == 1373  # billed as reported
    assert stderr.count("reported 1,373 output tokens for a reply it streamed in 800") == 1
    # many tokens a piece, past the limit: at fault
    fake.reset()
    fake.quirks = Quirks(piece=100)
    fake.respond = lambda request: Reply(text="word " * 2_000, output_tokens=2_500)
    path = workflow(write, "{provider: local, model: m, max_tokens: 100}", retry="{max_retries: 0}")
    code, results, stderr = run(cli, provider_env, path, "--config", config)
    assert code == 1, stderr
    assert (
        "reported 2,500 output tokens for a reply limited to max_tokens 100"
        in (results["agents"]["a"]["error"])
    )


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


def test_a_total_limit_cuts_a_live_reply_that_goes_on_too_long(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """`timeout_total`: the attempt's whole time, however live its stream. Each
    piece comes within the (idle) `timeout`; the reply as a whole does not come
    within `timeout_total`, so the attempt fails, named by that limit."""
    fake.quirks = Quirks(piece=4, gap=0.15)  # 40 pieces over 6 s
    fake.respond = lambda request: Reply(text="x" * 160)
    path = workflow(
        write,
        "{provider: openai, model: gpt-4o, max_tokens: 100}",
        timeout="5",
        timeout_total="1",
        retry="{max_retries: 0}",
    )
    code, results, stderr = run(cli, provider_env, path)
    assert code == 1, stderr
    error = results["agents"]["a"]["error"]
    assert "the reply was not over within the timeout_total of 1 s" in error
    [attempt] = results["agents"]["a"]["attempts"]
    assert attempt["duration_seconds"] >= 1.0  # (from below only: a busy machine is later)
    # given in defaults, for every agent; an agent's own goes over it
    path = write(
        "version: 1\nname: w\ndefaults: {timeout_total: 0.5, retry: {max_retries: 0}}\n"
        "agents:\n"
        "  a: {prompt: hi, llm: {provider: openai, model: gpt-4o, max_tokens: 100}}\n"
        "  b: {prompt: hi, timeout_total: 30,"
        " llm: {provider: openai, model: gpt-4o, max_tokens: 100}}\n"
    )
    fake.reset()
    fake.quirks = Quirks(piece=40, gap=0.3)  # 4 pieces over 1.2 s
    fake.respond = lambda request: Reply(text="x" * 160)
    code, results, stderr = run(cli, provider_env, path)
    assert code == 1, stderr
    assert "timeout_total of 0.5 s" in results["agents"]["a"]["error"]
    assert results["agents"]["b"]["state"] == "completed"


def test_which_limit_each_server_reads() -> None:
    assert token_parameter_for(None) == "max_completion_tokens"  # the SDK's default: OpenAI
    assert token_parameter_for("https://api.openai.com/v1") == "max_completion_tokens"
    assert token_parameter_for("http://127.0.0.1:8080/v1") == "max_tokens"
    assert token_parameter_for("https://openrouter.ai/api/v1") == "max_tokens"


def test_which_calls_stream_by_default() -> None:
    """`stream: auto`: a server not known to keep max_tokens is always streamed
    (aoe holds the limit); the vendors' own APIs, which keep it, are asked for
    whole replies (one read, not ~30-70 us of CPU a piece), unless someone
    watches the replies (-v) or a reply could outlast its timeout."""
    from aoe.providers.anthropic import AnthropicProvider
    from aoe.providers.base import streams
    from aoe.providers.openai import Azure, OpenAIProvider
    from aoe.types import Message, Request

    def keeps(provider: Any) -> bool:
        return bool(provider.keeps_limits)

    assert keeps(OpenAIProvider("openai", api_key="k", base_url="https://api.openai.com/v1"))
    assert keeps(OpenAIProvider("openai", api_key="k", base_url=None))
    assert keeps(
        OpenAIProvider("az", api_key="k", base_url="https://x.openai.azure.com", azure=Azure())
    )
    assert not keeps(OpenAIProvider("local", api_key=None, base_url="http://127.0.0.1:1/v1"))
    assert keeps(AnthropicProvider("anthropic", api_key="k", base_url="https://api.anthropic.com"))
    assert not keeps(AnthropicProvider("proxy", api_key="k", base_url="http://127.0.0.1:4000"))

    def request(max_tokens: int, timeout: float | None = 60.0) -> Request:
        message = (Message("user", "hi"),)
        return Request("openai", "gpt-4o", message, max_tokens, timeout=timeout)

    assert not streams(None, True, request(500), live=False)  # the vendor's API: whole
    assert streams(None, True, request(500), live=True)  # -v: watched as it comes
    assert streams(None, True, request(1201), live=False)  # could outlast 60 s at 20 a second
    assert not streams(None, True, request(1200), live=False)
    assert streams(None, False, request(10), live=False)  # any other server: always
    assert streams(True, True, request(10), live=False)  # as the provider says
    assert not streams(False, False, request(10_000), live=True)


@pytest.mark.parametrize(("setting", "streamed"), [("", True), ("auto", True), ("false", False)])
def test_a_declared_server_is_streamed_unless_it_says_not(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    setting: str,
    streamed: bool,
) -> None:
    line = f"    stream: {setting}\n" if setting else ""
    engine = write(
        f"providers:\n  local:\n    base_url: {fake.openai_url}\n"
        f"    default_price: {{input: 0, output: 0}}\n{line}",
        "engine.yaml",
    )
    fake.respond = lambda request: Reply(text="hello")
    path = workflow(write, "{provider: local, model: m, max_tokens: 20}")
    code, _, stderr = run(cli, provider_env, path, "--config", engine)
    assert code == 0, stderr
    [request] = fake.received
    assert bool(request.body.get("stream")) is streamed


def test_a_cut_off_reply_is_marked_in_the_results_junit_and_progress(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    tmp_path: Any,
) -> None:
    fake.quirks = LLAMA
    fake.respond = lambda request: Reply(text=LONG)
    path = workflow(write, "{provider: openai, model: gpt-4o, max_tokens: 20}")
    junit = tmp_path / "junit.xml"
    result = cli(
        "run", path, "--junit", junit, "--log-format", "text", "--no-cache", env=provider_env
    )
    assert result.exit_code == 0, result.stderr
    assert "a: completed" in result.stderr
    assert "its reply cut off at max_tokens" in result.stderr
    xml = junit.read_text()
    assert '<property name="truncated" value="true" />' in xml
    assert "cut off at max_tokens" in xml
    fake.reset()
    fake.respond = lambda request: Reply(text="short")
    result = cli("run", path, "--junit", junit, "--no-cache", env=provider_env)
    assert result.exit_code == 0, result.stderr
    assert "truncated" not in junit.read_text()


def test_an_agent_may_refuse_cut_off_replies(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """`output.allow_truncated: false`: a cut-off reply fails its attempt, which is
    retried; a complete one is the output."""
    fake.quirks = LLAMA
    fake.script(Reply(text=LONG), Reply(text="A complete answer."))
    path = workflow(
        write,
        "{provider: openai, model: gpt-4o, max_tokens: 20}",
        output="{allow_truncated: false}",
        retry="{max_retries: 2, base_delay: 0}",
    )
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    agent = results["agents"]["a"]
    assert agent["output"] == "A complete answer."
    assert agent["truncated"] is False
    first, second = agent["attempts"]
    assert first["error_kind"] == "ReplyTruncated"
    assert "cut off at max_tokens (20) and output.allow_truncated is false" in first["error"]
    assert first["truncated"] is True
    assert second["status"] == "ok"


def test_refusing_cut_off_replies_changes_the_agents_definition_only_then() -> None:
    from aoe.format.workflow import Agent, LLMConfig, OutputConfig, SourceText
    from aoe.state.definitions import definition

    agent = Agent(
        "a", SourceText("hi", "w.yaml", 1), LLMConfig("openai", "gpt-4o", 100), timeout=60
    )
    refusing = agent._replace(output=OutputConfig(allow_truncated=False))
    assert definition(agent) == definition(agent._replace(output=OutputConfig()))
    assert definition(refusing) != definition(agent)


# -- structured output --------------------------------------------------------------------

SCHEMA = "{type: object, properties: {verdict: {type: string}}, required: [verdict]}"


def two_json_agents(write: WriteFile, provider: str) -> Any:
    lines = [
        "version: 1",
        "name: judged",
        "agents:",
        *(
            f"  {name}:\n    prompt: Judge {name}.\n"
            f"    llm: {{provider: {provider}, model: gpt-4o, max_tokens: 50}}\n"
            f"    output: {{format: json, schema: {SCHEMA}}}\n"
            + ("    depends_on: [first]\n" if name == "second" else "")
            for name in ("first", "second")
        ),
    ]
    return write("\n".join(lines) + "\n")


def test_a_server_that_refuses_json_schema_gets_json_mode_for_the_rest_of_the_run(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """llama.cpp answers `json_schema` with HTTP 500. The same request goes once
    more in JSON mode (the schema sent as llama reads it, and in the prompt); it
    is answered, aoe says so in one line, and the next agent goes in JSON mode
    at once. Every reply is still checked against the schema."""
    fake.quirks = LLAMA
    fake.respond = lambda request: Reply(json={"verdict": "fine"})
    result = cli(
        "run", two_json_agents(write, "openai"), "--output", "-", "--no-cache", env=provider_env
    )
    assert result.exit_code == 0, result.stderr
    refused, first, second = fake.received
    assert refused.body["response_format"]["type"] == "json_schema"
    for request in (first, second):
        form = request.body["response_format"]
        assert form["type"] == "json_object"
        assert form["schema"]["required"] == ["verdict"]
        # a grammar must end: its one string may take the whole reply, 2 characters a token
        assert form["schema"]["properties"]["verdict"]["maxLength"] == 100
        assert "matches this JSON Schema" in request.prompt
    said = [line for line in result.stderr.splitlines() if "json_schema" in line]
    assert len(said) == 1, result.stderr
    assert "openai does not take response_format json_schema" in said[0]
    assert "HTTP 500" in said[0]
    document = json.loads(result.stdout)
    assert document["agents"]["first"]["output"] == {"verdict": "fine"}
    # the refused request was no attempt of its own
    assert [len(a["attempts"]) for a in document["agents"].values()] == [1, 1]


@pytest.mark.parametrize(
    ("declared", "sent"),
    [("json_schema", "json_schema"), ("json_object", "json_object"), ("none", None)],
)
def test_a_provider_declares_how_it_takes_a_schema(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    declared: str,
    sent: str | None,
) -> None:
    fake.respond = lambda request: Reply(json={"verdict": "fine"})
    config = provider_config(write, fake, structured_output=declared)
    result = cli(
        "run", two_json_agents(write, "local"), "--config", config, "--no-cache", env=provider_env
    )
    assert result.exit_code == 0, result.stderr
    for request in fake.received:
        form = request.body.get("response_format")
        assert (form or {}).get("type") == sent
        assert ("matches this JSON Schema" in request.prompt) is (declared != "json_schema")


def test_a_declared_json_schema_provider_that_refuses_it_fails_as_declared(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """Declared, it is not second-guessed: the refusal is the attempt's error."""
    fake.quirks = LLAMA
    config = provider_config(write, fake, structured_output="json_schema")
    path = two_json_agents(write, "local")
    result = cli("run", path, "--config", config, "--no-cache", env=provider_env)
    assert result.exit_code == 1
    assert all(r.body["response_format"]["type"] == "json_schema" for r in fake.received)


def test_an_outage_is_not_taken_for_a_refusal_of_json_schema(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """A 500 that names nothing it refused is an outage: retried as one, with
    the schema sent as before."""
    from tests.fakeserver import Fail

    fake.script(Fail(500, "internal error"), Reply(json={"verdict": "fine"}))
    fake.respond = lambda request: Reply(json={"verdict": "fine"})
    result = cli("run", two_json_agents(write, "openai"), "--no-cache", env=provider_env)
    assert result.exit_code == 0, result.stderr
    assert "does not take" not in result.stderr
    assert all(r.body["response_format"]["type"] == "json_schema" for r in fake.received)
    assert len(fake.received) == 3  # the first agent's twice, the second's once


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("failure", "said"),
    [
        pytest.param(
            Reply(text="half a rep", unfinished=True),
            "the reply's stream ended before the reply did",
            id="stops-short",
        ),
        pytest.param(
            Reply(text="half a rep", stream_error="Overloaded right now"),
            "it sent an error (overloaded_error): Overloaded right now",
            id="error-event",
        ),
        pytest.param(
            Reply(text="hello", stream_garbage="[1, 2, 3]"), "not an object", id="not-chunks"
        ),
    ],
)
def test_a_stream_that_fails_mid_way_is_a_failure_not_a_reply(
    cli: RunCli,
    write: WriteFile,
    fake: FakeProvider,
    provider_env: dict[str, str],
    vendor: str,
    failure: Reply,
    said: str,
) -> None:
    """A server that answered 200 and then failed while answering: the stream
    stops with no finish reason (llama-cpp-python, a prompt over its context),
    or carries an error (Anthropic's `event: error` when overloaded mid-reply;
    an OpenAI-compatible server's `{"error": …}` chunk), or is not of chunks at
    all. That is no (half) reply: the attempt fails in the server's words, is
    retried, and is charged its reservation (the server may have billed what it
    generated)."""
    fake.script(failure, Reply(text="a whole reply"))
    model = "gpt-4o" if vendor == "openai" else "claude-sonnet-4-5"
    path = workflow(
        write,
        f"{{provider: {vendor}, model: {model}, max_tokens: 20}}",
        retry="{max_retries: 1, base_delay: 0}",
    )
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    first, second = results["agents"]["a"]["attempts"]
    if failure.stream_error and vendor == "openai":  # (the chunk names no kind)
        said = "it sent an error: Overloaded right now"
    assert said in first["error"]
    assert first["cost_usd"] == pytest.approx(first["reserved_usd"])
    assert second["status"] == "ok"
    assert results["agents"]["a"]["output"] == "a whole reply"
    assert "Traceback" not in stderr


def test_a_schema_sent_as_a_grammar_has_an_end() -> None:
    """llama.cpp turns the schema into a grammar: a string with no maxLength lets
    the model write until it is cut off, always invalid JSON. What is sent is
    bounded to fit max_tokens; the reply is checked against the schema as is."""
    from aoe.providers.base import fitted

    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "summary": {"type": "string", "minLength": 900},
            "level": {"type": "string", "enum": ["low", "high"]},
            "notes": {"type": "array", "items": {"type": "string"}, "minItems": 6},
            "fixed": {"type": "string", "maxLength": 5},
        },
    }
    sent = fitted(schema, 400)
    properties = sent["properties"]
    assert properties["summary"]["maxLength"] == 900  # its minLength, over its share
    assert "maxLength" not in properties["level"]  # an enum ends by itself
    assert properties["notes"]["maxItems"] == 6  # its minItems, over the 4 of a list
    assert properties["notes"]["items"]["maxLength"] == 400 * 2 // 7  # 1 + 6 strings
    assert properties["fixed"] == {"type": "string", "maxLength": 5}
    assert schema["properties"]["summary"] == {"type": "string", "minLength": 900}  # a copy
    # however long the reply may be, no bound over 500 (llama.cpp's parser breaks
    # on ~1,000, and its server crashes)
    one = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert fitted(one, 600)["properties"]["a"]["maxLength"] == 500


def test_verbose_progress_prints_each_reply_as_it_arrives(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda request: Reply(text="first line\nsecond line\nlast, unended")
    path = workflow(write, "{provider: openai, model: gpt-4o, max_tokens: 50}")
    result = cli("run", path, "-v", "--log-format", "text", "--no-cache", env=provider_env)
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    said = [line for line in lines if line.startswith("a> ")]
    assert said == ["a> first line", "a> second line", "a> last, unended"]
    answered = next(i for i, line in enumerate(lines) if "attempt 1 answered" in line)
    assert lines.index("a> last, unended") < answered  # the reply, then its attempt's line
    quiet = cli("run", path, "--log-format", "text", "--no-cache", env=provider_env)
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("a> ")]


def test_the_verbose_live_view_shows_the_last_words_of_running_agents() -> None:
    from io import StringIO

    from aoe.cli.ui.live import LiveView
    from aoe.cli.ui.text import console
    from aoe.events import AgentStarted
    from aoe.service.runner import load
    from tests.conftest import WORKFLOWS

    flow = load(WORKFLOWS / "competitor-brief.yaml")
    buffer = StringIO()
    view = LiveView(flow, console(buffer, width=160), verbose=True)
    view(AgentStarted(run_id="r", at=0.0, agent_id="research"))
    for piece in ["Electric ", "bikes\nsell ", "well in ", "Europe. " * 10, "The end"]:
        view.text("research", None, piece)
    view.summary()
    row = next(line for line in buffer.getvalue().splitlines() if line.startswith("research"))
    assert row.rstrip().endswith("Europe. The end")  # the last words, on one line
    assert "reply" in buffer.getvalue()


def test_a_raw_newline_inside_a_json_string_is_read_as_one() -> None:
    """llama.cpp's JSON grammar lets a model write a raw newline inside a string
    (strict JSON says \\n): the demo's brief failed four times on it."""
    from aoe.format.workflow import OutputConfig
    from aoe.policy.outputs import parse_output

    schema = {"type": "object", "properties": {"summary": {"type": "string"}}}
    value = parse_output('{"summary": "two\nlines\tand a tab"}', OutputConfig("json", schema))
    assert value == {"summary": "two\nlines\tand a tab"}


def test_json_mode_holds_a_json_reply_without_a_schema_too(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    """`output: {format: json}` with no schema, to a provider in JSON mode: the
    server is asked for JSON (translation's review wrote prose to llama)."""
    fake.respond = lambda request: Reply(json={"German": []})
    config = provider_config(write, fake, structured_output="json_object")
    path = workflow(write, "{provider: local, model: m, max_tokens: 50}", output="{format: json}")
    code, results, stderr = run(cli, provider_env, path, "--config", config)
    assert code == 0, stderr
    [request] = fake.received
    form = request.body["response_format"]
    assert form["type"] == "json_object"
    assert "JSON Schema" not in request.prompt
    assert results["agents"]["a"]["output"] == {"German": []}
    # sent as a grammar, the schema ends every string and list (translation's review
    # wrote one string of zeros to llama until it was cut off, four times over)
    import jsonschema

    def ends(schema: Any, depth: int = 0) -> None:
        assert depth < 40
        if isinstance(schema, dict):
            assert schema.get("type") != "string" or schema["maxLength"] <= 500
            assert schema.get("type") != "array" or schema["maxItems"] <= 4
            for part in schema.values():
                ends(part, depth + 1)
        elif isinstance(schema, list):
            for part in schema:
                ends(part, depth + 1)

    ends(form["schema"])
    sent = jsonschema.Draft202012Validator(form["schema"])
    assert sent.is_valid({"German": ["a typo", {"line": 3, "fix": "x"}], "French": [], "n": 1})
    assert not sent.is_valid({"German": "0" * 1000})
    assert not sent.is_valid([1, 2])


def test_anthropic_cache_reads_are_billed_input_streamed_or_not(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str]
) -> None:
    fake.respond = lambda request: Reply(
        text="ok", input_tokens=100, output_tokens=10, cache_read_tokens=900
    )
    path = workflow(write, "{provider: anthropic, model: claude-sonnet-4-5, max_tokens: 20}")
    code, results, stderr = run(cli, provider_env, path)
    assert code == 0, stderr
    assert results["agents"]["a"]["usage"] == {"input_tokens": 1000, "output_tokens": 10}


@pytest.mark.parametrize("schema", [True, False])
def test_an_anthropic_api_proxy_in_json_mode_is_sent_openais_json_mode_along(
    cli: RunCli, write: WriteFile, fake: FakeProvider, provider_env: dict[str, str], schema: bool
) -> None:
    """`type: anthropic` with `structured_output: json_object`: a proxy speaking
    Anthropic's API in front of an OpenAI-compatible server (LiteLLM passes the
    fields it does not translate on as they are). The schema goes into the
    prompt, and OpenAI's JSON mode in the body, with an end, for the server."""
    engine = write(
        "providers:\n  proxy:\n    type: anthropic\n"
        f"    base_url: {fake.anthropic_url}\n"
        "    default_price: {input: 0, output: 0}\n"
        "    structured_output: json_object\n",
        "engine.yaml",
    )
    fake.respond = lambda request: Reply(json={"title": "ok"})
    output = (
        "{format: json, schema: {type: object, properties: {title: {type: string}}}}"
        if schema
        else "{format: json}"
    )
    path = workflow(write, "{provider: proxy, model: m, max_tokens: 100}", output=output)
    code, results, stderr = run(cli, provider_env, path, "--config", engine)
    assert code == 0, stderr
    [request] = fake.received
    assert request.api == "anthropic"
    assert "output_config" not in request.body
    form = request.body["response_format"]
    assert form["type"] == "json_object"
    if schema:
        assert form["schema"]["properties"]["title"]["maxLength"] <= 500
        assert "JSON Schema" in request.prompt
    else:
        assert form["schema"]["type"] == "object"
    assert results["agents"]["a"]["output"] == {"title": "ok"}
