"""`corral serve` with the `ecs` compute driver configured by CORRAL_ECS_* variables: what
it offers, what `POST /api/models/start` refuses before any AWS call, and a start refused
when a GPU instance type has no capacity provider.

AWS here is a recorder on 127.0.0.1 that answers every call with an error and keeps the
operation names (X-Amz-Target), so the test sees exactly which calls were made. Nothing
else is contacted: a replica that ran would be health-checked at its task's private IP,
which is why running ECS tasks are covered by the driver's moto tests instead
(crates/corral-driver-ecs/tests/moto.rs).
"""

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from conftest import MODEL, Server, corral_binary


class Recorder(BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.calls.append(self.headers.get("X-Amz-Target", self.path))
        body = json.dumps({"__type": "AccessDeniedException", "message": "recorder"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def aws():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def ecs_env(endpoint: str, **extra: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "CORRAL_ECS_CLUSTER": "corral",
        "CORRAL_ECS_SUBNETS": "subnet-1",
        "CORRAL_ECS_SECURITY_GROUPS": "sg-1",
        "CORRAL_ECS_LOG_GROUP": "/corral",
        "CORRAL_ECS_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/corral-execution",
        "CORRAL_ECS_GPU_CAPACITY_PROVIDERS": "g5.xlarge=cp-g5,g4dn.xlarge=cp-g4dn",
        **extra,
    }


@pytest.fixture(scope="module")
def ecs_server(aws):
    with mock.patch.dict(os.environ, ecs_env(aws)):
        s = Server()
    yield s
    s.stop()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_ecs_offers_and_refusals_before_any_aws_call(ecs_server):
    token = ecs_server.login("user")
    offers = ecs_server.http.get("/api/compute", headers=auth(token)).json()
    ecs = {o["compute_type"]: o for o in offers if o["driver"] == "ecs"}
    assert set(ecs) == {"fargate", "gpu"}, offers
    assert sorted(t["name"] for t in ecs["gpu"]["gpu_instance_types"]) == [
        "g4dn.xlarge",
        "g5.xlarge",
    ]

    # The control: the driver's calls do reach the recorder (the orphan sweep at start
    # lists the cluster's tasks).
    deadline = time.monotonic() + 30
    while not any("ListTasks" in c for c in Recorder.calls):
        assert time.monotonic() < deadline, Recorder.calls
        time.sleep(0.1)
    Recorder.calls.clear()
    for body, words in [
        # 0.25 vCPU goes with 512 to 2048 MiB on Fargate.
        ({"compute_type": "fargate", "cpu": 0.25, "memory": 4096}, "0.25 vCPU"),
        # A GPU type without a capacity provider is not offered.
        ({"compute_type": "gpu", "instance_type": "g5.2xlarge"}, "g5.2xlarge"),
    ]:
        r = ecs_server.http.post(
            "/api/models/start", json={"model_id": MODEL, **body}, headers=auth(token)
        )
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["error"]["message"], r.text
    assert ecs_server.http.get("/api/instances", headers=auth(token)).json() == []
    time.sleep(1)
    assert Recorder.calls == [], "refused before any AWS call"



def test_gpu_type_without_capacity_provider_stops_the_start(aws, tmp_path):
    env = {
        **os.environ,
        **ecs_env(aws, CORRAL_ECS_GPU_INSTANCE_TYPES="g5.xlarge,g5.2xlarge"),
        "CORRAL_DATA_DIR": str(tmp_path),
    }
    env.pop("CORRAL_DATABASE_URL", None)
    proc = subprocess.run(
        [str(corral_binary()), "serve", "--listen", "127.0.0.1:0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "GPU instance type g5.2xlarge has no capacity provider" in proc.stderr, proc.stderr
