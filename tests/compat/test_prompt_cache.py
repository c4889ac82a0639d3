"""Prompt caching: the next turn of a conversation reuses the KV cache of the last one."""

import openai
import pytest

from conftest import MODEL_NAME

TURN1 = [
    {"role": "system", "content": "You are a concise assistant. " * 20},
    {"role": "user", "content": "Name three rivers in France."},
]


def conversation(client):
    """Two turns at temperature 0: returns both answers and the second's usage.

    Turn 2 is kept short: as llama-server documents for `cache_prompt`, logits are not
    bit-for-bit the same when a token was computed in another batch (turn 1's answer was
    decoded one token at a time, the uncached turn 2 reads it as prompt), so two greedy
    answers can part at a near-tie after some tokens (seen after ~20 with SmolLM2)."""
    kwargs = dict(model=MODEL_NAME, temperature=0, max_tokens=40)
    first = client.chat.completions.create(messages=TURN1, **kwargs)
    turn2 = TURN1 + [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Which of them is the longest?"},
    ]
    second = client.chat.completions.create(messages=turn2, **{**kwargs, "max_tokens": 10})
    return first.choices[0].message.content, second.choices[0].message.content, second.usage


def client_of(runner):
    return openai.OpenAI(base_url=runner.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def cached_and_uncached():
    from conftest import Runner

    cached = Runner("--parallel", "2", "--ctx", "2048")
    uncached = Runner("--parallel", "2", "--ctx", "2048", "--no-cache-prompt")
    yield cached, uncached
    cached.stop()
    uncached.stop()


def test_turn_two_reuses_turn_one_and_answers_the_same(cached_and_uncached):
    cached, uncached = cached_and_uncached
    a1, a2, usage = conversation(client_of(cached))
    b1, b2, usage_off = conversation(client_of(uncached))
    # Turn 1's prompt and most of its answer are in the cache; the new message is not.
    details = usage.prompt_tokens_details
    assert 100 < details.cached_tokens < usage.prompt_tokens, usage
    assert usage_off.prompt_tokens_details.cached_tokens == 0
    assert usage.prompt_tokens == usage_off.prompt_tokens
    assert (a1, a2) == (b1, b2)
    assert cached.metric("prompt_cached_tokens_total") >= details.cached_tokens


def test_a_prompt_that_diverges_midway_is_answered_as_without_cache(cached_and_uncached):
    cached, uncached = cached_and_uncached
    kwargs = dict(model=MODEL_NAME, temperature=0, max_tokens=10)
    first = TURN1[:1] + [{"role": "user", "content": "Name three rivers in Spain."}]
    other = TURN1[:1] + [{"role": "user", "content": "Name three mountains in Italy."}]
    c, u = client_of(cached), client_of(uncached)
    c.chat.completions.create(messages=first, **kwargs)
    r = c.chat.completions.create(messages=other, **kwargs)
    # The shared system prompt is reused, the diverging tail of the cache is dropped.
    assert 0 < r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens - 5
    # Had the tail about Spain stayed in the cache, the answer would not be about Italy.
    # (Not compared token for token with the uncached answer: see conversation().)
    answer = r.choices[0].message.content
    assert "Spain" not in answer and answer.split()[:3] == u.chat.completions.create(
        messages=other, **kwargs).choices[0].message.content.split()[:3]


def test_ollama_reports_the_cached_part(cached_and_uncached):
    cached, _ = cached_and_uncached
    body = {"model": MODEL_NAME, "messages": TURN1, "stream": False,
            "options": {"temperature": 0, "num_predict": 5}}
    cached.http.post("/api/chat", json=body).json()
    again = cached.http.post("/api/chat", json=body).json()
    # prompt_eval_count counts the whole prompt (Ollama's semantics), the cached part too.
    assert again["prompt_eval_cached_count"] == again["prompt_eval_count"] - 1
