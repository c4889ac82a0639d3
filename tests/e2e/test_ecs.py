"""`corral serve` with the `ecs` compute driver configured by CORRAL_ECS_* variables: what
it offers, what `POST /api/models/start` refuses before any AWS call, and a start refused
when a GPU instance type has no capacity provider.

AWS here is a recorder on 127.0.0.1 that answers every call with an error and keeps the
operation names (X-Amz-Target), so the test sees exactly which calls were made. Nothing
else is contacted: a replica that ran would be health-checked at its task's private IP,
which is why running ECS tasks are covered by the driver's moto tests
(crates/corral-driver-ecs/tests/moto.rs) and, through the reconciler, by the moto tests
at the end of this file: deploy on Fargate, Fargate Spot and GPU, RunTask with the right
task definition, delete, StopTask (moto starts the tasks and keeps them RUNNING; nothing
answers their health checks, which these tests do not need).
"""

import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import httpx
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


# --- `corral serve` with the ecs driver on moto, through the reconciler (issue 13 item 5) ---

MOTO_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "moto_server"
REMOTE_MODEL = "llama2:7b"  # the catalog's Ollama-registry entry: the task pulls it itself


@pytest.fixture(scope="module")
def moto():
    """A throwaway moto server (the AWS emulator) and a boto3 session on it, with ECS
    tasks pinned RUNNING until StopTask (moto otherwise advances one state per
    DescribeTasks) and a cluster and log group for Corral."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
    httpx.post(
        endpoint + "/moto-api/state-manager/set-transition",
        json={"model_name": "ecs::task",
              "transition": {"progression": "manual", "times": 1000000}},
    ).raise_for_status()
    session = boto3.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
    client = lambda name: session.client(name, endpoint_url=endpoint)  # noqa: E731
    client("ecs").create_cluster(clusterName="corral-e2e")
    client("logs").create_log_group(logGroupName="/corral/e2e")
    # A g5.xlarge in the cluster for GPU tasks to be placed on (moto places EC2 tasks on
    # registered container instances only: 4096 CPU units and 7482 MiB each).
    instance = client("ec2").run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="g5.xlarge"
    )["Instances"][0]["InstanceId"]
    client("ecs").register_container_instance(
        cluster="corral-e2e", instanceIdentityDocument=json.dumps({"instanceId": instance})
    )
    yield endpoint, client
    proc.terminate()
    proc.wait(timeout=10)


def moto_ecs_server(moto, **extra: str) -> Server:
    """`corral serve` with the ecs driver on the moto cluster, plus `extra` settings."""
    endpoint, client = moto
    ec2 = client("ec2")
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"][0]["GroupId"]
    env = ecs_env(
        endpoint,
        CORRAL_ECS_CLUSTER="corral-e2e",
        CORRAL_ECS_SUBNETS=subnet,
        CORRAL_ECS_SECURITY_GROUPS=group,
        CORRAL_ECS_LOG_GROUP="/corral/e2e",
        CORRAL_ECS_GPU_CAPACITY_PROVIDERS="g5.xlarge=corral-gpu",
        **extra,
    )
    with mock.patch.dict(os.environ, env):
        return Server()


@pytest.fixture(scope="module")
def moto_server(moto):
    s = moto_ecs_server(moto, CORRAL_ECS_RUNNER_IMAGE="example.test/corral-runner:e2e")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def moto_ollama_server(moto):
    """Configured as the README shows: a runtime image and no runner image."""
    s = moto_ecs_server(moto, CORRAL_ECS_RUNTIME_IMAGE="ollama/ollama:latest")
    yield s
    s.stop()


def corral_tasks(ecs, instance_id: str) -> list[dict]:
    """The tasks on the cluster tagged with the instance."""
    arns = ecs.list_tasks(cluster="corral-e2e")["taskArns"]
    if not arns:
        return []
    tasks = ecs.describe_tasks(cluster="corral-e2e", tasks=arns, include=["TAGS"])["tasks"]
    return [
        t for t in tasks
        if {"key": "corral:instance-id", "value": instance_id} in t.get("tags", [])
    ]


def wait_for(what: str, f, timeout: float = 30, why=lambda: ""):
    deadline = time.monotonic() + timeout
    while True:
        value = f()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {why()}"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "size, capacity_provider",
    [
        ({"compute_type": "fargate", "cpu": 2, "memory": 8192}, "FARGATE"),
        ({"compute_type": "fargate", "cpu": 2, "memory": 8192, "spot": True}, "FARGATE_SPOT"),
        ({"compute_type": "gpu", "instance_type": "g5.xlarge", "memory": 6144}, "corral-gpu"),
    ],
    ids=["fargate", "fargate_spot", "gpu"],
)
def test_item5_ecs_deploy_reaches_run_task_without_local_weights_and_delete_stops_it(
    moto, moto_server, size, capacity_provider
):
    _, client = moto
    ecs = client("ecs")
    token = moto_server.login("user")
    r = moto_server.http.post(
        "/api/models/start", json={"model_id": REMOTE_MODEL, **size}, headers=auth(token)
    )
    assert r.status_code == 201, r.text
    inst = r.json()
    iid = inst["id"]
    task = wait_for(
        "RunTask",
        lambda: corral_tasks(ecs, iid),
        why=lambda: moto_server.http.get(f"/api/instances/{iid}", headers=auth(token)).text,
    )[0]
    assert task["capacityProviderName"] == capacity_provider
    td = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert td["networkMode"] == "awsvpc"
    c = td["containerDefinitions"][0]
    assert c["image"] == "example.test/corral-runner:e2e"
    assert c["portMappings"][0]["containerPort"] == 11434
    assert c["logConfiguration"]["logDriver"] == "awslogs"
    assert c["logConfiguration"]["options"]["awslogs-group"] == "/corral/e2e"
    env = {kv["name"]: kv["value"] for kv in c["environment"]}
    assert env["CORRAL_MODEL"] == REMOTE_MODEL
    assert "CORRAL_MODEL_OLLAMA" in env, env
    if size["compute_type"] == "gpu":
        assert td["requiresCompatibilities"] == ["EC2"]
        assert {"type": "GPU", "value": "1"} in c["resourceRequirements"], c
    else:
        assert td["requiresCompatibilities"] == ["FARGATE"]
        assert (td["cpu"], td["memory"]) == ("2048", "8192")
    # The control plane fetched nothing: the task pulls the weights itself.
    assert not list((moto_server.data_dir / "models").glob("llama2*")), list(
        (moto_server.data_dir / "models").iterdir()
    )

    r = moto_server.http.delete(f"/api/instances/{iid}", headers=auth(token))
    assert r.status_code in (200, 202), r.text
    wait_for(
        "the instance to be deleted",
        lambda: moto_server.http.get(f"/api/instances/{iid}", headers=auth(token)).status_code
        == 404,
    )
    left = [t["taskArn"] for t in corral_tasks(ecs, iid) if t["lastStatus"] != "STOPPED"]
    assert left == [], "StopTask of every task of the instance"
    stopped = corral_tasks(ecs, iid)
    assert stopped and all(t["stoppedReason"].startswith("stopped by Corral") for t in stopped)


def test_item5_a_host_file_model_is_refused_on_ecs_before_anything_is_created(moto_server):
    token = moto_server.login("user")
    before = moto_server.http.get("/api/instances", headers=auth(token)).json()
    # The demo model is a GGUF on the Corral host, which no ECS task can read.
    r = moto_server.http.post(
        "/api/models/start",
        json={"model_id": MODEL, "compute_type": "fargate", "cpu": 1, "memory": 2048},
        headers=auth(token),
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "unsupported_model_source", r.text
    assert "file on the Corral host" in r.json()["error"]["message"], r.text
    assert moto_server.http.get("/api/instances", headers=auth(token)).json() == before


def test_ecs_without_a_runner_image_runs_the_ollama_image(moto, moto_ollama_server):
    """The server picks the driver's runtime from its configuration: with only
    `runtime_image`, a registry model deploys as an ollama/ollama task pulling it (the
    server used to ask for corral-runner and refuse every model with 400)."""
    _, client = moto
    ecs = client("ecs")
    server = moto_ollama_server
    token = server.login("user")
    r = server.http.post(
        "/api/models/start",
        json={"model_id": REMOTE_MODEL, "compute_type": "fargate", "cpu": 2, "memory": 8192},
        headers=auth(token),
    )
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    task = wait_for(
        "RunTask",
        lambda: corral_tasks(ecs, iid),
        why=lambda: server.http.get(f"/api/instances/{iid}", headers=auth(token)).text,
    )[0]
    td = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    c = td["containerDefinitions"][0]
    assert c["image"] == "ollama/ollama:latest"
    env = {kv["name"]: kv["value"] for kv in c["environment"]}
    assert env["CORRAL_MODEL"] == REMOTE_MODEL
    assert env["CORRAL_OLLAMA_PULL"].endswith(REMOTE_MODEL), env  # library/llama2:7b
    r = server.http.delete(f"/api/instances/{iid}", headers=auth(token))
    assert r.status_code in (200, 202), r.text
    wait_for(
        "the instance to be deleted",
        lambda: server.http.get(f"/api/instances/{iid}", headers=auth(token)).status_code == 404,
    )
    assert [t for t in corral_tasks(ecs, iid) if t["lastStatus"] != "STOPPED"] == []
