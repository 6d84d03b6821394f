"""Engine configuration: precedence, sources, validation and secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aoe.config.environment import parse_dotenv
from aoe.config.settings import load_settings
from aoe.errors import ConfigInvalid
from tests.conftest import REPO, RunCli, WriteFile, fake_key

SECRET = fake_key()


def test_defaults_come_from_the_deployment_guide(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    config = settings.config
    assert config.rate_limiting.requests_per_minute == 60
    assert config.rate_limiting.tokens_per_minute == 100_000
    assert config.cost_tracking.default_workflow_budget == 100.0
    assert config.cost_tracking.default_agent_budget == 1.0
    assert (config.retry_policy.max_retries, config.retry_policy.base_delay) == (3, 1.0)
    assert config.engine.max_concurrent_workflows == 50
    assert settings.config_file is None
    assert not config.redis.configured


def test_precedence_flags_env_dotenv_file_defaults(tmp_path: Path, write: WriteFile) -> None:
    config = write(
        "rate_limiting:\n  requests_per_minute: 10\n  requests_per_hour: 20\n"
        "  requests_per_day: 30\n  tokens_per_minute: 40\n",
        "engine.yaml",
    )
    write("RATE_LIMIT_RPH=200\nRATE_LIMIT_RPD=300\nRATE_LIMIT_RPM=100\n", ".env")
    settings = load_settings(
        str(config),
        flags={"rate_limiting.requests_per_minute": (7, "--rpm")},
        environ={"RATE_LIMIT_RPD": "3000"},
        cwd=tmp_path,
    )
    limits = settings.config.rate_limiting
    assert limits.requests_per_minute == 7  # flag
    assert limits.requests_per_day == 3000  # real environment over .env
    assert limits.requests_per_hour == 200  # .env over the file
    assert limits.tokens_per_minute == 40  # file over the default
    assert limits.concurrent_requests == 10  # default
    sources = {s.key: s.source for s in settings.settings()}
    assert sources["rate_limiting.requests_per_minute"] == "flag --rpm"
    assert sources["rate_limiting.requests_per_day"] == "env RATE_LIMIT_RPD"
    assert sources["rate_limiting.requests_per_hour"] == ".env:1 RATE_LIMIT_RPH"
    assert sources["rate_limiting.tokens_per_minute"] == f"{config}:5"
    assert sources["rate_limiting.concurrent_requests"] == "default"


def test_config_file_from_aoe_config(tmp_path: Path, write: WriteFile) -> None:
    config = write("engine: {max_concurrent_workflows: 3}\n", "c.yaml")
    settings = load_settings(environ={"AOE_CONFIG": str(config)}, cwd=tmp_path)
    assert settings.config.engine.max_concurrent_workflows == 3
    assert settings.config_file == str(config)


@pytest.mark.parametrize(
    ("variable", "value", "path", "expected"),
    [
        ("RATE_LIMIT_TPM", "5000", ("rate_limiting", "tokens_per_minute"), 5000),
        ("RATE_LIMIT_CONCURRENT", "3", ("rate_limiting", "concurrent_requests"), 3),
        ("DEFAULT_WORKFLOW_BUDGET", "2.5", ("cost_tracking", "default_workflow_budget"), 2.5),
        ("DEFAULT_AGENT_BUDGET", "none", ("cost_tracking", "default_agent_budget"), None),
        ("MAX_RETRIES", "0", ("retry_policy", "max_retries"), 0),
        ("RETRY_BASE_DELAY", "0.25", ("retry_policy", "base_delay"), 0.25),
        ("RETRY_MAX_DELAY", "5", ("retry_policy", "max_delay"), 5.0),
        ("MAX_CONCURRENT_WORKFLOWS", "9", ("engine", "max_concurrent_workflows"), 9),
        ("LOG_LEVEL", "debug", ("monitoring", "log_level"), "DEBUG"),
        ("ENABLE_METRICS", "yes", ("monitoring", "enable_metrics"), True),
        ("PROMETHEUS_PORT", "9100", ("monitoring", "prometheus_port"), 9100),
        ("REDIS_HOST", "redis.local", ("redis", "host"), "redis.local"),
        ("REDIS_PORT", "6380", ("redis", "port"), 6380),
        ("REDIS_DB", "2", ("redis", "db"), 2),
        ("AOE_STATE_DIR", "/var/lib/aoe", ("engine", "state_dir"), "/var/lib/aoe"),
    ],
)
def test_every_environment_variable(
    tmp_path: Path, variable: str, value: str, path: tuple[str, str], expected: object
) -> None:
    settings = load_settings(environ={variable: value}, cwd=tmp_path)
    section = getattr(settings.config, path[0])
    assert getattr(section, path[1]) == expected


def test_bad_values_are_reported_where_they_were_set(tmp_path: Path, write: WriteFile) -> None:
    config = write(
        "engine:\n  max_concurent_workflows: 3\nretry_policy: {base_delay: 5, max_delay: 1}\n"
        "monitoring: {log_level: LOUD}\n",
        "c.yaml",
    )
    write("# comment\nexport RATE_LIMIT_RPH=lots\n", ".env")
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(
            str(config), environ={"RATE_LIMIT_RPM": "0", "MAX_RETRIES": "x"}, cwd=tmp_path
        )
    assert [d.format() for d in caught.value.diagnostics] == [
        ".env:2: error: RATE_LIMIT_RPH='lots': must be a whole number or none",
        "environment: error: MAX_RETRIES='x': must be a whole number",
        "environment: error: RATE_LIMIT_RPM='0': rate_limiting.requests_per_minute "
        "must be at least 1, not 0",
        f"{config}:2:3: error: unknown key 'max_concurent_workflows' in engine; "
        "did you mean 'max_concurrent_workflows'?",
        f"{config}:3:31: error: retry_policy.max_delay: max_delay (1) is less than "
        "base_delay (5); make max_delay at least base_delay",
        f"{config}:4:25: error: monitoring.log_level must be one of DEBUG, INFO, WARNING, "
        'ERROR, CRITICAL, not a string ("LOUD")',
    ]
    assert caught.value.exit_code == 2


def test_every_mistake_of_a_config_file_is_said_at_once_in_order(
    tmp_path: Path, write: WriteFile
) -> None:
    """A provider's bad field hid the others' missing base_url, only the first of
    those was said, a union's refusal was said once per member, and the lines
    came out of order."""
    config = write(
        "providers:\n"
        "  one: {type: openai, stream: maybe}\n"
        "  two: {type: openai}\n"
        "  three: {type: openai}\n"
        "rate_limiting:\n"
        "  requests_per_minute: 0\n",
        "c.yaml",
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(str(config), environ={}, cwd=tmp_path)
    needs = "needs a base_url (its API root, e.g. http://localhost:11434/v1) or a preset"
    assert [d.format() for d in caught.value.diagnostics] == [
        f"{config}:2:31: error: providers.one.stream must be true, false or auto, "
        'not a string ("maybe")',
        f"{config}:3:3: error: provider 'two' {needs} (e.g. preset: ollama)",
        f"{config}:4:3: error: provider 'three' {needs} (e.g. preset: ollama)",
        f"{config}:6:24: error: rate_limiting.requests_per_minute must be at least 1, not 0",
    ]


def test_the_mock_cannot_be_declared_and_a_vendor_speaks_its_own_api(
    tmp_path: Path, write: WriteFile
) -> None:
    config = write("providers:\n  mock: {base_url: http://y/v1}\n", "c.yaml")
    with pytest.raises(ConfigInvalid, match="'mock' is aoe's offline provider"):
        load_settings(str(config), environ={}, cwd=tmp_path)
    config = write("providers:\n  anthropic: {type: openai}\n", "d.yaml")
    with pytest.raises(ConfigInvalid, match="'anthropic' set to speak the openai API needs"):
        load_settings(str(config), environ={}, cwd=tmp_path)
    config = write("providers:\n  local: {api_key_env: LOCAL_KEY}\n", "e.yaml")
    with pytest.raises(ConfigInvalid, match="provider 'local' needs a base_url"):
        load_settings(str(config), environ={}, cwd=tmp_path)


def test_provider_fields_say_what_is_expected(tmp_path: Path, write: WriteFile) -> None:
    config = write(
        "providers:\n  local:\n    base_url: localhost:8000\n    api_key_env: sk-abc\n"
        "redis: {url: 'localhost:6379'}\n",
        "c.yaml",
    )
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(str(config), environ={}, cwd=tmp_path)
    assert [d.format() for d in caught.value.diagnostics] == [
        f"{config}:3:15: error: providers.local.base_url: must be an http:// or https:// "
        "URL, e.g. http://localhost:11434/v1",
        f"{config}:4:18: error: providers.local.api_key_env: must be the name of an "
        "environment variable (letters, digits and underscores), not its value",
        f"{config}:5:14: error: redis.url: must be a redis:// or rediss:// URL, "
        "e.g. redis://localhost:6379/0",
    ]


def test_missing_file_named_by_aoe_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(environ={"AOE_CONFIG": "nope.yaml"}, cwd=tmp_path)
    assert str(caught.value) == (
        "nope.yaml: error: file not found; check the path (named by env AOE_CONFIG)"
    )


def test_sources_of_dotted_model_names(tmp_path: Path, write: WriteFile) -> None:
    config = write(
        "cost_tracking:\n  model_costs:\n    gpt-4o: {input: 1, output: 2}\n"
        "    gpt-4.1:\n      input: 3\n      output: 4\n",
        "c.yaml",
    )
    settings = load_settings(str(config), environ={}, cwd=tmp_path)
    sources = {s.key: s.source for s in settings.settings()}
    assert sources["cost_tracking.model_costs.gpt-4.1.input"] == f"{config}:5"
    assert sources["cost_tracking.model_costs.gpt-4.1.output"] == f"{config}:6"
    assert sources["cost_tracking.model_costs.gpt-4o.output"] == f"{config}:3"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="file not found"):
        load_settings(str(tmp_path / "nope.yaml"), environ={}, cwd=tmp_path)


def test_prices_extend_and_override_the_table(tmp_path: Path, write: WriteFile) -> None:
    config = write(
        "cost_tracking:\n  model_costs:\n    gpt-4o: {input: 1, output: 2}\n"
        "    my-model: {input: 0.5, output: 0.5}\n"
        "providers:\n  local: {base_url: 'http://localhost:1/v1', default_price: "
        "{input: 0, output: 0}}\n",
        "c.yaml",
    )
    settings = load_settings(str(config), environ={}, cwd=tmp_path)
    assert settings.price_of("openai", "gpt-4o").input == 1  # type: ignore[union-attr]
    assert settings.price_of("openai", "gpt-4o-2024-11-20").output == 2  # type: ignore[union-attr]
    assert settings.price_of("openai", "my-model") is not None
    assert settings.price_of("openai", "gpt-4o-mini") is not None  # built-in kept
    assert settings.price_of("openai", "unknown") is None
    assert settings.price_of("local", "llama3").input == 0  # type: ignore[union-attr]
    assert settings.price_of("mock", "unknown").output == 0  # type: ignore[union-attr]
    assert settings.price_of("mock", "gpt-4o").input == 1  # type: ignore[union-attr]


def test_builtin_table_covers_the_required_models(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    required = [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "claude-3-opus-20240229",
        "claude-3-sonnet-20240229",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "claude-opus-4-1",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-3-5-haiku-latest",
    ]
    missing = [m for m in required if settings.prices.lookup(m) is None]
    assert missing == []


def test_dotenv_syntax() -> None:
    parsed = parse_dotenv(
        "# comment\n\nexport A=1\nB = 'two words'\nC=\"x # y\"\nD=plain # note\nnot a line\n"
    )
    assert {k: v for k, (v, _) in parsed.items()} == {
        "A": "1",
        "B": "two words",
        "C": "x # y",
        "D": "plain",
    }
    assert parsed["D"][1] == 6


def test_config_show_masks_secrets(cli: RunCli, write: WriteFile) -> None:
    write(f"ANTHROPIC_API_KEY={SECRET}\n", ".env")
    config = write(
        "providers:\n  gateway:\n    base_url: https://me:hunter2@gw.example/v1\n"
        "    api_key_env: GW_KEY\n"
        "redis: {url: 'redis://:hunter2@redis.local:6379/0'}\n",
        "c.yaml",
    )
    env = {
        "OPENAI_API_KEY": SECRET,
        "GW_KEY": SECRET,
        "OPENAI_BASE_URL": "https://user:hunter2@proxy.local/v1",
    }
    for fmt in ("text", "json"):
        result = cli("config", "show", "-c", config, "-f", fmt, env=env)
        assert result.exit_code == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
        assert "hunter2" not in result.stdout
    report = json.loads(result.stdout)
    assert report["providers.openai.api_key"] == {
        "value": "******** (set)",
        "source": "env OPENAI_API_KEY",
    }
    assert report["providers.anthropic.api_key"]["source"] == ".env:1 ANTHROPIC_API_KEY"
    assert report["providers.gateway.api_key"]["source"] == "env GW_KEY"
    assert report["redis.url"]["value"] == "redis://:********@redis.local:6379/0"
    assert report["providers.gateway.base_url"]["value"] == "https://me:********@gw.example/v1"
    assert report["providers.openai.base_url"] == {
        "value": "https://user:********@proxy.local/v1",
        "source": "env OPENAI_BASE_URL",
    }
    assert report["rate_limiting.requests_per_minute"] == {"value": 60, "source": "default"}


def test_config_show_text(cli: RunCli) -> None:
    result = cli(
        "config", "show", "-c", REPO / "config" / "production.yaml", env={"RATE_LIMIT_RPM": "42"}
    )
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].endswith("config/production.yaml")
    assert any(
        line.split() == ["rate_limiting.requests_per_minute", "=", "42", "(env", "RATE_LIMIT_RPM)"]
        for line in lines
    )
    assert any(
        line.startswith("engine.max_concurrent_workflows") and "= 100" in line for line in lines
    )
    assert any("providers.openai.api_key" in line and "(not set)" in line for line in lines)


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    for name in ("production.yaml", "dev.yaml"):
        settings = load_settings(str(REPO / "config" / name), environ={}, cwd=tmp_path)
        assert settings.config.retry_policy.strategy == "exponential_backoff"
    dev = load_settings(str(REPO / "config" / "dev.yaml"), environ={}, cwd=tmp_path)
    assert dev.price_of("ollama", "llama3.1") is not None
    assert dev.api_key_variable("ollama") is None
    assert dev.api_key_variable("vllm") == "VLLM_API_KEY"


def test_bad_config_in_a_json_report(cli: RunCli, write: WriteFile) -> None:
    config = write("rate_limiting: {requests_per_minut: 5}\n", "c.yaml")
    result = cli("validate", "-c", config, "-f", "json", REPO / "workflows" / "code-review.yaml")
    assert result.exit_code == 2
    [problem] = json.loads(result.stdout)
    assert (problem["file"], problem["line"], problem["code"]) == (str(config), 1, "unknown-key")


def test_bad_config_exits_2_without_traceback(cli: RunCli, write: WriteFile) -> None:
    config = write("rate_limiting: {requests_per_minut: 5}\n", "c.yaml")
    result = cli("validate", "-c", config, REPO / "workflows" / "competitor-brief.yaml")
    assert result.exit_code == 2
    assert "did you mean 'requests_per_minute'?" in result.stderr
    assert "Traceback" not in result.stderr
