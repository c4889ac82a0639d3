"""The official `ollama` Python client against corral-runner."""

import json
import math

import ollama
import pytest

from conftest import MODEL_NAME

GREEDY = {"temperature": 0, "seed": 42}


@pytest.fixture(scope="module")
def client(runner):
    return ollama.Client(host=runner.url)


def test_root_and_version(runner):
    assert runner.http.get("/").text == "Ollama is running"
    assert runner.http.get("/api/version").json()["version"]


def test_list(client):
    models = client.list().models
    assert [m.model for m in models] == [MODEL_NAME]
    m = models[0]
    assert m.size > 90_000_000
    assert len(m.digest) == 64
    assert m.details.format == "gguf"
    assert m.details.family == "llama"
    assert m.details.quantization_level == "Q4_1"


def test_show(client):
    info = client.show(MODEL_NAME)
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "<|im_start|>" in info.template
    assert info.details.parameter_size.endswith("M")
    assert "completion" in info.capabilities


def test_ps(client):
    running = client.ps().models
    assert [m.model for m in running] == [MODEL_NAME]
    assert running[0].context_length == 2048


def test_generate(client):
    r = client.generate(MODEL_NAME, "What is the capital of France?", options=GREEDY)
    assert "Paris" in r.response
    assert r.done and r.done_reason == "stop"
    assert r.prompt_eval_count > 5 and r.eval_count > 3
    assert r.total_duration >= r.prompt_eval_duration + r.eval_duration > 0
    assert r.context and len(r.context) == r.prompt_eval_count + r.eval_count


def test_generate_stream(client):
    opts = {**GREEDY, "num_predict": 40}
    chunks = list(client.generate(MODEL_NAME, "Count from 1 to 5.", stream=True, options=opts))
    assert len(chunks) > 3
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done and last.done_reason in ("stop", "length")
    assert last.eval_count > 0 and last.eval_duration > 0
    # the same greedy answer as without streaming
    whole = client.generate(MODEL_NAME, "Count from 1 to 5.", options=opts).response
    assert "".join(c.response for c in chunks) == whole != ""


def test_generate_context_continues(client):
    first = client.generate(MODEL_NAME, "My name is Ada.", options={**GREEDY, "num_predict": 10})
    second = client.generate(
        MODEL_NAME, "What is my name?", context=first.context, options={**GREEDY, "num_predict": 20}
    )
    assert second.prompt_eval_count > len(first.context)


def test_chat(client):
    r = client.chat(
        MODEL_NAME,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        options=GREEDY,
    )
    assert r.message.role == "assistant"
    assert "Paris" in r.message.content
    assert r.done and r.eval_count > 0


def test_chat_stream(client):
    chunks = list(
        client.chat(
            MODEL_NAME,
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Name three colors."},
            ],
            stream=True,
            options={**GREEDY, "num_predict": 40},
        )
    )
    assert chunks[-1].done
    assert all(c.message.role == "assistant" for c in chunks)
    assert len("".join(c.message.content for c in chunks)) > 10


def test_greedy_answer_is_deterministic(client):
    ask = lambda: client.chat(  # noqa: E731
        MODEL_NAME,
        messages=[{"role": "user", "content": "Write one sentence about the sea."}],
        options={**GREEDY, "num_predict": 30},
    ).message.content
    first, second = ask(), ask()
    assert first and first == second


def test_seeded_sampling_is_deterministic(client):
    opts = {"temperature": 0.9, "seed": 7, "num_predict": 30}
    ask = lambda: client.generate(MODEL_NAME, "Tell me a story.", options=opts).response  # noqa: E731
    assert ask() == ask()


def test_num_predict_and_stop(client):
    r = client.generate(MODEL_NAME, "Count from 1 to 20.", options={**GREEDY, "num_predict": 3})
    assert r.eval_count == 3 and r.done_reason == "length"
    r = client.generate(
        MODEL_NAME, "What is the capital of France?", options={**GREEDY, "stop": ["Paris"]}
    )
    assert "Paris" not in r.response and r.done_reason == "stop"


def test_format_json(client):
    r = client.generate(
        MODEL_NAME, "Describe a cat as JSON.", format="json", options={**GREEDY, "num_predict": 40}
    )
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.response), dict)
    else:
        assert r.response.lstrip().startswith("{")


def test_embed(client):
    r = client.embed(MODEL_NAME, input=["The cat sleeps.", "A cat is sleeping.", "Stock prices fell."])
    vectors = r.embeddings
    assert len(vectors) == 3 and len(vectors[0]) == 576
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert r.prompt_eval_count > 6


def test_legacy_embeddings(client):
    r = client.embeddings(MODEL_NAME, prompt="hello")
    assert len(r.embedding) == 576


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate("no-such-model", "hi")
    assert e.value.status_code == 404
    assert "not found" in e.value.error


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/api/chat", {"model": MODEL_NAME, "messages": []}, "messages"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": "hi", "options": {"num_ctx": 100000}}, "num_ctx"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": "hi " * 3000}, "context length"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": "hi", "options": {"temperature": -1}}, "temperature"),
        ("/api/generate", {"model": MODEL_NAME, "prompt": "hi", "format": "yaml"}, "format"),
        ("/api/chat", {"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ("/api/generate", {"model": MODEL_NAME, "context": [10**9]}, "vocabulary"),
        ("/api/generate", {"prompt": "hi"}, "model is required"),
        # SmolLM2's own template has no tools: Ollama's answer for such a model.
        ("/api/chat", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"type": "function", "function": {"name": "f"}}]},
         "does not support tools"),
    ],
)
def test_bad_input_is_400(runner, path, body, needle):
    r = runner.http.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_malformed_json_is_400(runner):
    r = runner.http.post("/api/chat", content=b'{"model": "smollm2:135m", "messages": [')
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]


def test_curl_style_form_content_type_is_accepted(runner):
    body = json.dumps({"model": MODEL_NAME, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
    r = runner.http.post(
        "/api/generate", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 200 and r.json()["done"]


def test_empty_prompt_loads(runner):
    r = runner.http.post("/api/generate", json={"model": MODEL_NAME})
    assert r.json()["done_reason"] == "load"


def test_streams_ndjson(runner):
    body = {"model": MODEL_NAME, "prompt": "hi", "options": {**GREEDY, "num_predict": 5}}
    with runner.http.stream("POST", "/api/generate", json=body) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert set(lines[-1]) >= {
        "model", "created_at", "response", "done", "done_reason", "context", "total_duration",
        "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration",
    }
    # The model was loaded before the server listened: no request waits for a load (time
    # queued for a slot counts in total_duration only, as in Ollama).
    assert lines[-1]["load_duration"] == 0
    assert lines[-1]["total_duration"] >= (
        lines[-1]["prompt_eval_duration"] + lines[-1]["eval_duration"])


def test_unknown_route_is_404_json(runner):
    r = runner.http.get("/api/nope")
    assert r.status_code == 404 and "error" in r.json()

