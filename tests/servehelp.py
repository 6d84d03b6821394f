"""`aoe serve` in a process of its own, and a small HTTP client for it: what the
tests of the service share (tests/test_serve*.py, tests/test_observability.py)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Response:
    def __init__(self, status_code: int, body: bytes, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.text = body.decode("utf-8", "replace")
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.text)


class Http:
    """A small HTTP client over urllib: what the tests need, nothing more."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.headers = headers or {}

    def _open(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        all_headers = {**self.headers, **(headers or {})}
        if json_body is not None:
            content = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(url, data=content, method=method, headers=all_headers)
        try:
            return urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as e:
            return e

    def request(self, method: str, path: str, **options: Any) -> Response:
        with self._open(method, path, **options) as response:
            return Response(response.status, response.read(), dict(response.headers))

    def get(self, path: str, **options: Any) -> Response:
        return self.request("GET", path, **options)

    def post(self, path: str, json: Any = None, **options: Any) -> Response:
        return self.request("POST", path, json_body=json, **options)

    def delete(self, path: str, **options: Any) -> Response:
        return self.request("DELETE", path, **options)

    def lines(self, path: str) -> Iterator[tuple[Response, str]]:
        """A streamed response, line by line."""
        with self._open("GET", path) as response:
            head = Response(response.status, b"", dict(response.headers))
            for raw in response:
                yield head, raw.decode().rstrip("\n")


class Service:
    """One `aoe serve` process; its log lines are kept."""

    def __init__(
        self, env: dict[str, str], cwd: Path, *args: str, open_files: int | None = None
    ) -> None:
        def limit() -> None:  # in the child, before aoe starts
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "aoe", "serve", "--port", "0", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit if open_files is not None else None,
        )
        self.lines: list[str] = []
        self.url = ""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "listening on " in line:
                self.url = line.split("listening on ")[1].split(" ")[0]
                break
        if not self.url:
            self.process.wait(timeout=30)
            raise AssertionError("aoe serve did not start:\n" + "".join(self.lines))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.token = env.get("AOE_API_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = Http(self.url, headers)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def submit(self, text: str, **fields: Any) -> str:
        response = self.http.post("/api/v1/runs", json={"workflow": text, **fields})
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        from tests.conftest import check_results

        check_results(run)  # the results document, whatever the run's state
        return run

    def wait(self, run_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        statuses = statuses or ("completed",)
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run["status"] in statuses:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {run['status']}, not {statuses}")
            time.sleep(0.05)

    def health(self) -> Response:
        return self.http.get("/health")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        self.close()
        return code

    def close(self) -> None:
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def services(env: dict[str, str], cwd: Path) -> Iterator[Callable[..., Service]]:
    """Start services (``start(*args, extra=env, open_files=N)``); each is
    killed at the end if it still runs."""
    started: list[Service] = []

    def _start(
        *args: str, extra: dict[str, str] | None = None, open_files: int | None = None
    ) -> Service:
        service = Service({**env, **(extra or {})}, cwd, *args, open_files=open_files)
        started.append(service)
        return service

    try:
        yield _start
    finally:
        for service in started:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait(timeout=30)
            service.close()
