"""The deployment files: Dockerfile, docker-compose.yml, deploy/k8s, deploy/systemd.

Each is checked by the tool its platform would judge it with, offline:
``kubernetes-validate --strict`` (bundled Kubernetes schemas) for the
manifests, ``check-jsonschema`` with its vendored Compose Specification schema
for docker-compose.yml, ``systemd-analyze verify`` for the unit. A missing
tool skips its test, unless ``AOE_REQUIRE_DEPLOY_TOOLS`` is set (as in CI),
where it fails. Cheap structural checks in Python cover what no schema says:
probes on the right paths, a non-root image with a health check, secrets only
by reference, and the config and workflow the manifests carry being valid.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, RunCli

K8S = REPO / "deploy" / "k8s"
UNIT = REPO / "deploy" / "systemd" / "aoe.service"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
GUIDE = REPO / "docs" / "deployment.md"

# The Kubernetes version the manifests are validated against: one that
# kubernetes-validate bundles (from its release 1.33 on, the lower bound in
# pyproject.toml), and old enough that the manifests suit clusters still in use.
K8S_VERSION = "1.33.0"
EXAMPLE_SECRET = "secret.example.yaml"
SECRET = "aoe-secrets"
SECRET_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AOE_API_TOKEN")
# Any variable named like one of these holds a secret.
SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
# Text shaped like a vendor's API key (never committed, even as an example).
KEY_SHAPED = re.compile(r"sk-(?:ant-)?[A-Za-z0-9_-]{16,}")
STATE_DIR = "/var/lib/aoe"


# -- helpers ------------------------------------------------------------------------------


def tool(name: str, install: str) -> str:
    """The path of an external tool (the virtualenv's bin first), or skip; fail
    instead when AOE_REQUIRE_DEPLOY_TOOLS is set."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        if os.environ.get("AOE_REQUIRE_DEPLOY_TOOLS"):
            pytest.fail(f"{name} is required here (AOE_REQUIRE_DEPLOY_TOOLS is set): {install}")
        pytest.skip(f"{name} is not installed ({install})")
    return found


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, check=False, timeout=120
    )


def manifests() -> list[Path]:
    """Every Kubernetes manifest (kustomization.yaml is kustomize's, not the API's)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert docs, f"{path.name} holds no object"
    assert all(isinstance(doc, dict) for doc in docs), path.name
    return docs


def objects(kind: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in manifests():
        for doc in documents(path):
            if kind is None or doc["kind"] == kind:
                yield path.name, doc


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        spec: dict[str, Any] = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    spec = obj["spec"]["template"]["spec"]
    return spec


def workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, obj in objects():
        if obj["kind"] in ("Deployment", "CronJob"):
            yield name, obj


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    found: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    return found


def is_aoe(container: dict[str, Any]) -> bool:
    return str(container["image"]).split(":")[0].rsplit("/", 1)[-1] == "aoe"


def probe_target(probe: dict[str, Any]) -> str:
    """What a probe asks: an HTTP path, or its command line."""
    if "httpGet" in probe:
        return str(probe["httpGet"]["path"])
    return " ".join(probe["exec"]["command"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def data_file(path: Path, key: str, tmp_path: Path) -> Path:
    """A ConfigMap's data key, written to a file."""
    (config_map,) = (d for d in documents(path) if d["kind"] == "ConfigMap")
    target = tmp_path / key
    target.write_text(config_map["data"][key], encoding="utf-8")
    return target


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def unit_settings(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each a list of (key, value); keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


# -- Kubernetes ---------------------------------------------------------------------------


@pytest.mark.subprocess
def test_kubernetes_manifests_pass_strict_schema_validation() -> None:
    validate = tool("kubernetes-validate", "pip install -e '.[dev]'")
    files = manifests()
    assert {p.name for p in files} >= {
        "namespace.yaml",
        EXAMPLE_SECRET,
        "configmap.yaml",
        "deployment.yaml",
        "worker.yaml",
        "service.yaml",
        "hpa.yaml",
        "cronjob.yaml",
        "redis.yaml",
    }
    checked = run(validate, "--strict", "--quiet", "-k", K8S_VERSION, *files)
    # --quiet prints only warnings and failures; a warning (an unknown kind or
    # apiVersion, which has no schema to check against) fails too.
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""


@pytest.mark.subprocess
def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    """The check above can fail: a field no schema knows is an error."""
    validate = tool("kubernetes-validate", "pip install -e '.[dev]'")
    text = (K8S / "deployment.yaml").read_text(encoding="utf-8")
    wrong = tmp_path / "deployment.yaml"
    wrong.write_text(text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"), "utf-8")
    checked = run(validate, "--strict", "--quiet", "-k", K8S_VERSION, wrong)
    assert checked.returncode != 0
    assert "readOnlyRootFileSystem" in checked.stdout + checked.stderr


def test_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == "aoe"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in manifests()} - {EXAMPLE_SECRET}
    for name in listed:
        assert all(doc["kind"] != "Secret" for doc in documents(K8S / name)), name


def test_every_object_is_named_and_in_the_aoe_namespace() -> None:
    for name, obj in objects():
        assert obj["metadata"]["name"], name
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "aoe", (name, obj["kind"])
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "aoe", name


def test_every_deployment_has_liveness_and_readiness_probes_on_the_right_paths() -> None:
    deployments = {obj["metadata"]["name"]: obj for _, obj in objects("Deployment")}
    assert set(deployments) == {"aoe", "aoe-worker", "redis"}
    for name, deployment in deployments.items():
        for container in containers(deployment):
            where = f"{name}/{container['name']}"
            liveness, readiness = container.get("livenessProbe"), container.get("readinessProbe")
            if container.get("args") == ["worker"] and not (liveness or readiness):
                # `aoe worker` serves no HTTP: nothing to probe, and nothing it listens on
                assert "ports" not in container, where
                assert "annotations" not in deployment["spec"]["template"]["metadata"], where
                continue
            assert liveness, f"{where} needs a liveness probe"
            assert readiness, f"{where} needs a readiness probe"
            if is_aoe(container):
                # alive: the process serves; ready: /health is not 503 (draining, queue full)
                assert probe_target(liveness) == "/health/live", where
                assert probe_target(readiness) == "/health", where
            else:
                assert probe_target(liveness) == probe_target(readiness) == "redis-cli ping"
    # aoe serve is probed over HTTP by the kubelet, on the port it listens on
    (serve,) = containers(deployments["aoe"])
    assert serve["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    ports = {port["name"]: port["containerPort"] for port in serve["ports"]}
    assert ports == {"http": 8000}
    assert serve["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert serve["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert containers(deployments["aoe-worker"])[0]["args"] == ["worker"]


def test_aoe_pods_drain_run_as_non_root_and_write_only_their_volumes() -> None:
    for name, obj in workloads():
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        mounted_volumes = {volume["name"] for volume in spec.get("volumes", [])}
        for container in containers(obj):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            if not is_aoe(container):
                continue
            # SIGTERM drains (runs in progress are cancelled and recorded): time for it
            assert spec["terminationGracePeriodSeconds"] >= 60, where
            assert spec["securityContext"]["runAsUser"] == 10001, where  # the image's user
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert {STATE_DIR, "/tmp", "/etc/aoe"} <= set(mounts), where
            assert {m["name"] for m in mounts.values()} <= mounted_volumes, where
            assert mounts["/etc/aoe"].get("readOnly") is True, where
            env = env_of(container)
            assert env["AOE_STATE_DIR"]["value"] == STATE_DIR, where
            assert env["AOE_CONFIG"]["value"] == "/etc/aoe/config.yaml", where
            assert env["REDIS_HOST"]["value"] == "redis", where


def test_aoe_serve_is_scraped_served_and_scaled() -> None:
    (deployment,) = (o for _, o in objects("Deployment") if o["metadata"]["name"] == "aoe")
    assert deployment["spec"]["replicas"] == 2
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (service,) = (o for _, o in objects("Service") if o["metadata"]["name"] == "aoe")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["selector"].items() <= labels.items()
    targets = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa for _, hpa in objects("HorizontalPodAutoscaler")
    }
    assert "aoe" in targets
    for hpa in targets.values():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (redis,) = (o for _, o in objects("Service") if o["metadata"]["name"] == "redis")
    assert redis["spec"]["ports"][0]["port"] == 6379


def test_secrets_are_referenced_never_inlined() -> None:
    for name, obj in workloads():
        for container in containers(obj):
            where = f"{name}/{container['name']}"
            for variable, entry in env_of(container).items():
                if not SECRET_NAME.search(variable):
                    continue
                assert "value" not in entry, f"{where}: {variable} is inlined"
                ref = entry["valueFrom"]["secretKeyRef"]
                assert (ref["name"], ref["key"]) == (SECRET, variable), where
            for source in container.get("envFrom", []):
                assert "secretRef" not in source or source["secretRef"]["name"] == SECRET
    # aoe serve binds beyond loopback: its token is required, not optional
    (deployment,) = (o for _, o in objects("Deployment") if o["metadata"]["name"] == "aoe")
    token = env_of(containers(deployment)[0])["AOE_API_TOKEN"]
    assert not token["valueFrom"]["secretKeyRef"].get("optional", False)
    # the only Secret is the example, with placeholders
    secrets = [(name, obj) for name, obj in objects("Secret")]
    assert [name for name, _ in secrets] == [EXAMPLE_SECRET]
    example = secrets[0][1]
    assert example["metadata"]["name"] == SECRET
    assert "data" not in example
    assert sorted(example["stringData"]) == sorted(SECRET_KEYS)
    for value in example["stringData"].values():
        assert value.startswith("replace-me"), value


def test_no_file_holds_anything_shaped_like_an_api_key() -> None:
    files = [*K8S.glob("*.yaml"), UNIT, COMPOSE, DOCKERFILE, REPO / ".dockerignore", GUIDE]
    for path in files:
        found = KEY_SHAPED.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.name}: {found.group(0) if found else ''}"


def test_the_configmap_holds_a_valid_engine_config(cli: RunCli, tmp_path: Path) -> None:
    config = data_file(K8S / "configmap.yaml", "config.yaml", tmp_path)
    shown = cli("config", "show", "--config", config, "--format", "json")
    assert shown.exit_code == 0, shown.stdout + shown.stderr
    assert yaml.safe_load(config.read_text(encoding="utf-8"))["engine"]["state_dir"] == STATE_DIR


def test_the_cronjob_runs_its_valid_workflow_nightly(cli: RunCli, tmp_path: Path) -> None:
    path = K8S / "cronjob.yaml"
    (cronjob,) = (doc for doc in documents(path) if doc["kind"] == "CronJob")
    assert cronjob["spec"]["schedule"] == "0 2 * * *"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = containers(cronjob)
    assert container["args"] == [
        "run",
        "/workflows/nightly.yaml",
        "--log-format",
        "json",
        "--pushgateway",
        "http://pushgateway:9091",
    ]
    assert "--resume-latest" in path.read_text(encoding="utf-8")  # the comment on finishing
    spec = pod_spec(cronjob)
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/workflows"]]["configMap"]["name"] == "aoe-nightly-workflow"
    # last night's record survives until tonight: --resume-latest needs it
    claim = volumes[mounts[STATE_DIR]]["persistentVolumeClaim"]["claimName"]
    assert any(o["metadata"]["name"] == claim for _, o in objects("PersistentVolumeClaim"))
    workflow = data_file(path, "nightly.yaml", tmp_path)
    checked = cli("validate", workflow)
    assert checked.exit_code == 0, checked.stdout + checked.stderr


# -- docker-compose -----------------------------------------------------------------------


@pytest.mark.subprocess
def test_compose_file_matches_the_compose_specification() -> None:
    checker = tool("check-jsonschema", "pip install -e '.[dev]'")
    checked = run(checker, "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stderr == ""


def test_compose_stack_is_wired_together() -> None:
    stack = compose()
    assert "version" not in stack  # obsolete: Compose warns about it
    services = stack["services"]
    assert set(services) == {"aoe", "worker", "redis", "prometheus", "grafana"}
    aoe, worker = services["aoe"], services["worker"]
    assert aoe["command"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] == 2
    for service in (aoe, worker):
        env = service["environment"]
        assert env["REDIS_HOST"] == "redis"
        assert env["ENABLE_METRICS"] == "true"
        assert "MAX_CONCURRENT_WORKFLOWS" in env
        for variable in SECRET_KEYS:  # from .env or the shell, never written here
            assert re.fullmatch(r"\$\{" + variable + r"[:?}].*", env[variable]), variable
        assert any(v.endswith(f":{STATE_DIR}") for v in service["volumes"])
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/health/live" in " ".join(aoe["healthcheck"]["test"])
    assert worker["healthcheck"] == {"disable": True}  # serves no HTTP: not aoe serve's check
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["command"][-2:] == ["--appendonly", "yes"]
    mounts = services["prometheus"]["volumes"]
    assert "./config/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    assert "./config/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    mounts = services["grafana"]["volumes"]
    assert "./config/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    assert "./config/grafana/dashboards:/var/lib/grafana/dashboards:ro" in mounts
    published = {
        name: [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
        for name, service in services.items()
    }
    assert published == {
        "aoe": ["8000"],
        "worker": [],
        "redis": [],
        "prometheus": ["9090"],
        "grafana": ["3000"],
    }
    for volume in [v for s in services.values() for v in s.get("volumes", [])]:
        source = volume.split(":", 1)[0]
        if source.startswith("./"):
            assert (REPO / source).exists(), volume
        else:
            assert source in stack["volumes"], volume


def test_prometheus_scrapes_the_compose_service_on_its_port() -> None:
    config = yaml.safe_load((REPO / "config" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "aoe")
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    aoe = compose()["services"]["aoe"]
    port = aoe["command"][aoe["command"].index("--port") + 1]
    assert targets == [f"aoe:{port}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


# -- the image ----------------------------------------------------------------------------


def test_dockerfile_builds_a_slim_non_root_image_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    stages = [args for word, args in instructions if word == "FROM"]
    assert stages == ["python:3.11-slim AS build", "python:3.11-slim"]
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    build, final = instructions[:last], instructions[last:]
    assert any(word == "RUN" and "pip wheel" in args for word, args in build)
    runs = " ".join(args for word, args in final if word == "RUN")
    assert "pip install --no-index" in runs  # only the wheels from the build stage
    for build_tool in ("apt-get", "gcc", "build-essential", "curl"):
        assert build_tool not in runs, build_tool
    assert "--uid 10001" in runs
    final_dict = dict(final)  # the last of each
    assert final_dict["USER"] in ("10001", "10001:10001", "aoe")
    assert final_dict["WORKDIR"] == "/app"
    assert final_dict["EXPOSE"] == "8000"
    assert f"AOE_STATE_DIR={STATE_DIR}" in " ".join(a for w, a in final if w == "ENV")
    health = final_dict["HEALTHCHECK"]
    assert "urllib" in health  # no curl in slim
    assert "http://127.0.0.1:8000/health/live" in health
    assert final_dict["ENTRYPOINT"] == '["aoe"]'
    assert final_dict["CMD"] == '["serve", "--host", "0.0.0.0", "--port", "8000"]'
    for word, args in instructions:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(KEY|TOKEN|SECRET|PASSWORD)\b", args), args


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build() -> None:
    ignored = set((REPO / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".venv", ".git", ".aoe", ".env", ".pytest_cache", ".mypy_cache"} <= ignored
    assert "__pycache__" in ignored or "**/__pycache__" in ignored


# -- systemd ------------------------------------------------------------------------------


def test_systemd_unit_runs_aoe_serve_hardened() -> None:
    sections = unit_settings(UNIT.read_text(encoding="utf-8"))
    service = sections["Service"]
    one = dict(service)  # the last of each key
    assert one["ExecStart"] == "/opt/aoe/.venv/bin/aoe serve --port 8000"
    assert (one["User"], one["Group"]) == ("aoe", "aoe")
    assert one["EnvironmentFile"] == "/etc/aoe/aoe.env"
    environment = [value for key, value in service if key == "Environment"]
    assert f"AOE_STATE_DIR={STATE_DIR}" in environment
    for value in environment:  # keys and tokens belong in the EnvironmentFile
        assert not SECRET_NAME.search(value.split("=", 1)[0]), value
    assert one["StateDirectory"] == "aoe"
    assert (one["Restart"], one["KillSignal"], one["TimeoutStopSec"]) == (
        "on-failure",
        "SIGTERM",
        "60",
    )
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert one.get(key) == value, key
    assert STATE_DIR in one["ReadWritePaths"].split()
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"


def test_systemd_unit_gives_aoe_serve_the_files_its_connections_need() -> None:
    """Under the unit's limit on open files, aoe serve takes its full default of
    connections, with the spare it keeps for the rest."""
    from aoe.service.connections import MOST_CONNECTIONS, default_max_connections

    one = dict(unit_settings(UNIT.read_text(encoding="utf-8"))["Service"])
    assert "LimitNOFILE" in one, "the unit must set LimitNOFILE"
    soft = int(one["LimitNOFILE"].split(":")[0])  # SOFT[:HARD]
    assert default_max_connections(soft) == MOST_CONNECTIONS


def verifiable_copy(tmp_path: Path, text: str) -> Path:
    """The unit as `systemd-analyze verify` can judge it on this machine.

    verify requires ExecStart's binary to exist, so the copy's ExecStart is
    rewritten from /opt/aoe/.venv/bin/aoe to the aoe installed beside this
    Python (the repository's .venv/bin/aoe). And some systemd versions warn
    about a User= or Group= this machine lacks while others say nothing, so
    where there is no `aoe` account the copy runs as the account running the
    tests: the check then means the same on every version, and stays strict.
    Everything else is verified exactly as written.
    """
    aoe = Path(sys.executable).parent / "aoe"
    assert os.access(aoe, os.X_OK), f"{aoe} is not an executable: install aoe in this venv"
    prefix = "ExecStart=/opt/aoe/.venv/bin/aoe "
    assert text.count(prefix) == 1
    text = text.replace(prefix, f"ExecStart={aoe} ")
    try:
        pwd.getpwnam("aoe")
        grp.getgrnam("aoe")
    except KeyError:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        text = re.sub(r"^User=aoe$", f"User={user}", text, count=1, flags=re.MULTILINE)
        text = re.sub(r"^Group=aoe$", f"Group={group}", text, count=1, flags=re.MULTILINE)
    copy = tmp_path / "aoe.service"  # the unit's name comes from the file's
    copy.write_text(text, encoding="utf-8")
    return copy


@pytest.mark.subprocess
def test_systemd_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    copy = verifiable_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    checked = run(analyze, "verify", "--man=no", copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stderr == "", checked.stderr  # a warning is a failure
    assert checked.stdout == "", checked.stdout


@pytest.mark.subprocess
def test_systemd_verify_does_report_a_mistake_here(tmp_path: Path) -> None:
    """The check above is not vacuous on this machine: a misspelt setting and a
    missing binary are reported."""
    analyze = tool("systemd-analyze", "apt-get install systemd")
    text = UNIT.read_text(encoding="utf-8").replace("PrivateTmp=", "PrivateTemp=")
    copy = verifiable_copy(tmp_path, text)
    checked = run(analyze, "verify", "--man=no", copy)
    assert "PrivateTemp" in checked.stderr
    missing = tmp_path / "missing"
    missing.mkdir()
    text = UNIT.read_text(encoding="utf-8").replace("/opt/aoe/", f"{tmp_path}/nowhere/")
    (missing / "aoe.service").write_text(text, encoding="utf-8")
    checked = run(analyze, "verify", "--man=no", missing / "aoe.service")
    assert checked.returncode != 0
    assert "nowhere" in checked.stderr


# -- the guide ----------------------------------------------------------------------------


def test_the_guide_names_every_setting_and_metric() -> None:
    from aoe.config.environment import (
        BUILTIN_KEY_VARIABLES,
        CONFIG_FILE_VARIABLE,
        ENVIRONMENT_VARIABLES,
    )
    from aoe.observe.metrics import Metrics

    guide = GUIDE.read_text(encoding="utf-8")
    variables = [*ENVIRONMENT_VARIABLES, *BUILTIN_KEY_VARIABLES.values(), CONFIG_FILE_VARIABLE]
    missing = [name for name in [*variables, "AOE_API_TOKEN"] if f"`{name}`" not in guide]
    assert not missing, f"docs/deployment.md does not name {missing}"
    metrics = []
    for family in Metrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        metrics.append(family.name + suffix)
    missing = [name for name in metrics if f"`{name}" not in guide]
    assert not missing, f"docs/deployment.md does not list the metrics {missing}"
    # every variable the deployment files set is one aoe reads
    known = {*variables, "AOE_API_TOKEN", "PYTHONUNBUFFERED"}
    for name, obj in workloads():
        for container in containers(obj):
            unknown = set(env_of(container)) - known
            assert not unknown, f"{name}: {unknown}"
    for service in ("aoe", "worker"):
        unknown = set(compose()["services"][service]["environment"]) - known
        assert not unknown, f"docker-compose.yml {service}: {unknown}"
