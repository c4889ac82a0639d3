"""The official `openai` Python client against corral-runner's /v1 API."""

import json

import openai
import pytest

from conftest import MODEL_NAME

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(runner):
    return openai.OpenAI(base_url=runner.url + "/v1", api_key="unused", max_retries=0)


def test_models_list(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_chat_completion(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, seed=1)
    choice = r.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_stream_with_usage(client):
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=QUESTION,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_and_non_stream_agree(client):
    kwargs = dict(model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=20)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
    )
    assert whole == streamed


def test_max_tokens_and_stop(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, temperature=0, max_tokens=2
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=0, stop="Paris")
    assert "Paris" not in r.choices[0].message.content


def test_json_response_format(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Give a person's name and age as JSON."}],
        temperature=0,
        max_tokens=80,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                },
            },
        },
    )
    data = json.loads(r.choices[0].message.content)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_completions(client):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens <= 5
    chunks = list(
        client.completions.create(
            model=MODEL_NAME, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_embeddings(client):
    # The client asks for base64 by default and decodes it.
    r = client.embeddings.create(model=MODEL_NAME, input=["hello world", "goodbye"])
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 576
    floats = client.embeddings.create(model=MODEL_NAME, input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    assert r.usage.prompt_tokens > 2
    short = client.embeddings.create(model=MODEL_NAME, input="hello", dimensions=64)
    assert len(short.data[0].embedding) == 64


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"


def test_bad_requests(client, runner):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, n=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "word " * 3000}]
        )
    r = runner.http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
