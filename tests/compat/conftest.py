"""Fixtures: a real corral-runner serving the real SmolLM2 model on a free port.

CORRAL_RUNNER_BIN and CORRAL_RUNNER_MODEL override where the binary and the model are
(scripts/test-runner.sh sets both).
"""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "smollm2:135m"


def runner_binary() -> Path:
    if "CORRAL_RUNNER_BIN" in os.environ:
        return Path(os.environ["CORRAL_RUNNER_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "debug" / "corral-runner"


def model_path() -> Path:
    return Path(os.environ.get("CORRAL_RUNNER_MODEL", ROOT / ".corral/models/smollm2-135m.gguf"))


class Runner:
    """A corral-runner child process on port 0; `url` comes from its `listening on` line."""

    def __init__(self, *extra_args: str):
        binary, model = runner_binary(), model_path()
        if not binary.exists():
            pytest.fail(f"{binary} not found: build it with `cargo build -p corral-runner`")
        if not model.exists():
            pytest.fail(f"{model} not found: run scripts/fetch-model.sh")
        self.proc = subprocess.Popen(
            [str(binary), "--model", str(model), "--name", MODEL_NAME, "--port", "0", *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        line = self.proc.stdout.readline()
        match = re.fullmatch(r"listening on (http://\S+)\n", line)
        if not match:
            self.stop()
            pytest.fail(f"runner did not start: {line!r}\n{''.join(self.stderr[-20:])}")
        self.url = match.group(1)
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def health(self) -> dict:
        return self.http.get("/health").json()

    def metric(self, name: str) -> float:
        text = self.http.get("/metrics").text
        match = re.search(rf"^corral_runner_{name} (\S+)$", text, re.M)
        assert match, f"metric {name} missing from:\n{text}"
        return float(match.group(1))

    def wait_idle(self, timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["slots"]["busy"] == 0 and health["queue_depth"] == 0:
                return health
            if time.monotonic() > deadline:
                return health
            time.sleep(0.02)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def runner():
    r = Runner("--parallel", "4", "--ctx", "2048")
    yield r
    r.stop()


@pytest.fixture
def runner_factory():
    started = []

    def start(*args: str) -> Runner:
        r = Runner(*args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
