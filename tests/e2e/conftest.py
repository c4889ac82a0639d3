"""A real `corral serve` for the end-to-end tests: the release or debug binary, a temp data
dir holding the demo model, users made with `corral admin create-user`, port 0.

CORRAL_BIN, CORRAL_RUNNER_BIN and CORRAL_E2E_MODEL override where the binaries and the GGUF
are (scripts/test-e2e.sh sets them). CORRAL_E2E_REPORT names a JSON file that collects the
timings the tests measure, for the script's summary.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2:135m"
PASSWORD = "SecurePass123!"


def _target() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def corral_binary() -> Path:
    return Path(os.environ.get("CORRAL_BIN", _target() / "debug" / "corral"))


def model_file() -> Path:
    return Path(os.environ.get("CORRAL_E2E_MODEL", ROOT / ".corral/models/smollm2-135m.gguf"))


def replica_pids(data_dir: Path, instance_id: str | None = None) -> list[int]:
    """Processes started by this server's local driver (their environment names the data
    dir), optionally only those of one instance."""
    want = [f"CORRAL_DATA_DIR={data_dir}".encode()]
    if instance_id:
        want.append(f"CORRAL_INSTANCE_ID={instance_id}".encode())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and all(w in env for w in want):
            pids.append(int(entry.name))
    return pids


class Server:
    """`corral serve` on 127.0.0.1:0 over a fresh data dir; `url` comes from its
    `listening on` line."""

    def __init__(self):
        binary, model = corral_binary(), model_file()
        if not binary.exists():
            pytest.fail(f"{binary} not found: build it with `cargo build -p corral`")
        if not model.exists():
            pytest.fail(f"{model} not found: run scripts/fetch-model.sh")
        self.tmp = tempfile.TemporaryDirectory(prefix="corral-e2e-")
        self.data_dir = Path(self.tmp.name).resolve()
        (self.data_dir / "models").mkdir()
        # The built-in catalog entry reads DATA_DIR/models/smollm2-135m.gguf.
        os.symlink(model.resolve(), self.data_dir / "models" / "smollm2-135m.gguf")
        self.env = {**os.environ, "CORRAL_DATA_DIR": str(self.data_dir), "CORRAL_LOG": "info"}
        self.env.pop("CORRAL_DATABASE_URL", None)
        self.env.pop("CORRAL_CONFIG", None)
        if "CORRAL_RUNNER_BIN" in os.environ:
            runner_dir = str(Path(os.environ["CORRAL_RUNNER_BIN"]).resolve().parent)
            self.env["PATH"] = runner_dir + os.pathsep + self.env.get("PATH", "")
        self.users = {}
        for role in ("admin", "user", "viewer"):
            self.users[role] = self.create_user(f"{role}@example.com", role)
        self.users["other"] = self.create_user("other@example.com", "user")
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--listen", "127.0.0.1:0"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.data_dir,
        )
        self.log: list[str] = []
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        self.url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        if not self.url:
            self.stop()
            pytest.fail("corral serve did not start:\n" + "".join(self.log[-40:]))
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def _drain(self, stream):
        for line in stream:
            self.log.append(line)

    def create_user(self, email: str, role: str) -> str:
        subprocess.run(
            [str(corral_binary()), "admin", "create-user", "--email", email, "--role", role,
             "--password-stdin"],
            input=PASSWORD + "\n",
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return email

    def login(self, role: str) -> str:
        r = self.http.post(
            "/api/auth/login", json={"email": self.users[role], "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def api_key(self, token: str, name: str = "e2e") -> str:
        r = self.http.post(
            "/api/keys",
            json={"name": name, "password": PASSWORD},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 201, r.text
        return r.json()["key"]

    def stop(self):
        """Deletes every instance (so no replica outlives the test), then SIGTERM."""
        if self.url and self.proc.poll() is None:
            try:
                token = self.login("admin")
                auth = {"Authorization": f"Bearer {token}"}
                for inst in self.http.get("/api/instances", headers=auth).json():
                    self.http.delete(f"/api/instances/{inst['id']}", headers=auth)
                deadline = time.monotonic() + 30
                while self.http.get("/api/instances", headers=auth).json():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            except (httpx.HTTPError, KeyError, AssertionError):
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in replica_pids(self.data_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.tmp.name, ignore_errors=True)


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def report():
    """Timings measured by the tests, written for scripts/test-e2e.sh's summary."""
    timings: dict[str, float] = {}
    yield timings
    path = os.environ.get("CORRAL_E2E_REPORT")
    if path:
        Path(path).write_text(json.dumps(timings, indent=2))
