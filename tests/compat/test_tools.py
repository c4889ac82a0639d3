"""Tool calling with the official clients: SmolLM2 given a Qwen-2.5-style tools template
(its own ChatML template has no tools), as a catalog entry's template override would."""

import json
from pathlib import Path

import ollama
import openai
import pytest

from conftest import MODEL_NAME

TEMPLATE = Path(__file__).with_name("chatml-tools.jinja")

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def tools_runner(runner_factory_module):
    return runner_factory_module("--parallel", "2", "--ctx", "2048", "--chat-template", str(TEMPLATE))


@pytest.fixture(scope="module")
def runner_factory_module():
    from conftest import Runner

    started = []

    def start(*args):
        r = Runner(*args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture(scope="module")
def client(tools_runner):
    return openai.OpenAI(base_url=tools_runner.url + "/v1", api_key="unused", max_retries=0)


def check_weather_args(arguments: str) -> dict:
    args = json.loads(arguments)
    assert set(args) == {"city", "unit"}, args
    assert isinstance(args["city"], str) and args["unit"] in ("celsius", "fahrenheit"), args
    return args


def test_required_returns_a_call_matching_the_schema(client):
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call-")
    assert call.function.name == "get_weather"
    check_weather_args(call.function.arguments)


def test_streamed_call_reassembles_to_the_same_call(client):
    kwargs = dict(model=MODEL_NAME, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finishes = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        choice = chunk.choices[0]
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        assert not choice.delta.content
        for d in choice.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"name": "", "arguments": ""})
            c["name"] += d.function.name or ""
            c["arguments"] += d.function.arguments or ""
    assert finishes == ["tool_calls"]
    assert list(calls) == [0]
    assert calls[0]["name"] == whole.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(whole.function.arguments)


def test_named_function_is_the_one_called(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
    )
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert set(json.loads(call.function.arguments)) == {"zone"}


def test_tool_result_continues_the_chat(client):
    first = client.chat.completions.create(
        model=MODEL_NAME, messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0
    )
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees"},
    ]
    r = client.chat.completions.create(
        model=MODEL_NAME, messages=history, tools=[WEATHER], tool_choice="none", temperature=0,
        max_tokens=60,
    )
    answer = r.choices[0].message
    assert answer.content and not answer.tool_calls
    # The call and its result are in the prompt: it is longer than the question alone.
    plain = client.chat.completions.create(model=MODEL_NAME, messages=ASK, max_tokens=1)
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 10


def test_unknown_named_function_is_400(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL_NAME, messages=ASK, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )


def test_ollama_client_tools_and_tool_results(tools_runner):
    client = ollama.Client(host=tools_runner.url)
    assert "tools" in client.show(MODEL_NAME).capabilities
    greedy = {"temperature": 0, "num_predict": 80}
    r = client.chat(model=MODEL_NAME, messages=ASK, tools=[WEATHER], options=greedy)
    # Ollama has no tool_choice: the model decides. Whatever it wrote, a call comes back
    # parsed and nothing of it is left in the content.
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    assert "<tool_call>" not in (r.message.content or "")
    history = ASK + [
        {"role": "assistant", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "Sunny, 24 degrees"},
    ]
    plain = client.chat(model=MODEL_NAME, messages=ASK, options=greedy)
    r = client.chat(model=MODEL_NAME, messages=history, options=greedy)
    assert r.message.content and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count > plain.prompt_eval_count
    # Streamed: the same calls and content as the whole answer.
    chunks = list(client.chat(model=MODEL_NAME, messages=ASK, tools=[WEATHER], options=greedy, stream=True))
    whole = client.chat(model=MODEL_NAME, messages=ASK, tools=[WEATHER], options=greedy)
    streamed_calls = [c for ch in chunks for c in (ch.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed_calls] == [
        (c.function.name, dict(c.function.arguments)) for c in (whole.message.tool_calls or [])
    ]
