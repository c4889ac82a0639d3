"""Continuous batching: many streams at once, cancellation, and the bounded queue."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama

from conftest import MODEL_NAME


def stream_chat(url: str, i: int) -> dict:
    client = ollama.Client(host=url)
    pieces, last = [], None
    for chunk in client.chat(
        MODEL_NAME,
        messages=[{"role": "user", "content": f"Tell me fact number {i} about space."}],
        stream=True,
        options={"temperature": 0.7, "seed": i, "num_predict": 48},
    ):
        pieces.append(chunk.message.content)
        last = chunk
    return {"text": "".join(pieces), "last": last}


def test_eight_concurrent_streaming_chats(runner):
    busy_seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            busy_seen.append(runner.health()["slots"]["busy"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: stream_chat(runner.url, i), range(8)))
    finally:
        stop.set()
        watcher.join()
    for r in results:
        assert r["last"].done, r
        assert r["last"].eval_count > 0 and r["text"]
    # 4 slots, 8 requests: the slots were used together, never more than there are.
    assert max(busy_seen) > 1
    assert max(busy_seen) <= 4
    assert runner.wait_idle()["slots"]["busy"] == 0


def test_cancelled_stream_frees_its_slot(runner):
    runner.wait_idle()
    cancelled_before = runner.metric("requests_cancelled_total")
    body = {"model": MODEL_NAME, "prompt": "Write a very long essay about the ocean.",
            "options": {"num_predict": 100000, "num_ctx": 2048}}
    with httpx.Client(base_url=runner.url, timeout=30) as http:
        with http.stream("POST", "/api/generate", json=body) as r:
            lines = r.iter_lines()
            for _ in range(5):
                assert not json.loads(next(lines))["done"]
            assert runner.health()["slots"]["busy"] == 1
        # leaving the block closes the connection mid-stream
    health = runner.wait_idle(timeout=3)
    assert health["slots"]["busy"] == 0
    assert runner.metric("requests_cancelled_total") == cancelled_before + 1


def test_full_queue_answers_503(runner_factory):
    small = runner_factory("--parallel", "1", "--queue", "1", "--ctx", "512")
    # Greedy counting goes on until num_predict: the slot stays busy for seconds.
    body = {"model": MODEL_NAME, "prompt": "1, 2, 3, 4, 5,", "raw": True,
            "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 400}}
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        with a.stream("POST", "/api/generate", json=body) as first:
            first_lines = first.iter_lines()  # keep a reference: dropping it closes the stream
            next(first_lines)  # generating: the only slot is busy
            with b.stream("POST", "/api/generate", json=body) as second:
                # waits in the queue (its headers are sent once the answer starts)
                deadline = time.monotonic() + 3
                while small.health()["queue_depth"] < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert small.health()["queue_depth"] == 1
                third = httpx.post(small.url + "/api/generate", json=body, timeout=30)
                assert third.status_code == 503
                assert "queue" in third.json()["error"]
                assert small.metric("requests_rejected_total") == 1
                second.close()
    # The cancelled queued request leaves the queue when the slot frees: at once when the
    # first request's disconnect is seen, at the latest when its 400 tokens are done,
    # which takes seconds on a loaded 2-core machine.
    assert small.wait_idle(timeout=30)["queue_depth"] == 0


def test_client_giving_up_on_a_non_streaming_answer_frees_its_slot(runner):
    runner.wait_idle()
    cancelled_before = runner.metric("requests_cancelled_total")
    body = {"model": MODEL_NAME, "prompt": "1, 2, 3, 4, 5,", "raw": True, "stream": False,
            "options": {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 100000}}
    with httpx.Client(base_url=runner.url, timeout=30) as http:
        # The headers arrive once generation has started; the body only at the end.
        with http.stream("POST", "/api/generate", json=body) as r:
            assert r.status_code == 200
            assert runner.health()["slots"]["busy"] == 1
        # leaving the block hangs up without reading the answer
    health = runner.wait_idle(timeout=3)
    assert health["slots"]["busy"] == 0
    assert runner.metric("requests_cancelled_total") == cancelled_before + 1
