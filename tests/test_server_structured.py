"""`edgellama serve`: response_format, tools and logprobs through the openai client."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")
pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

from helpers.serving import MODEL_ID, call, model, serving, tiny_package  # noqa: E402,F401

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Who is Ada? And the weather in Paris?"}]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory, max_length=1024)     # room for the tools' system prompt


@pytest.fixture(scope="module")
def client(model):
    with serving(model, parallel=2) as running:
        yield openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_json_schema_answers_validate(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    whole = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=80,
                                           response_format=fmt)
    assert whole.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole.choices[0].message.content), PERSON)
    streamed = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=80,
                                              response_format=fmt, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == whole.choices[0].message.content
    sampled = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=1.0, seed=3, max_tokens=80,
                                             response_format={"type": "json_object"})
    assert isinstance(json.loads(sampled.choices[0].message.content), dict)


def test_a_tool_call_and_its_result(client):
    answer = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=120,
                                            tools=[WEATHER], tool_choice="required")
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call_ = choice.message.tool_calls[0]
    assert call_.type == "function" and call_.function.name == "get_weather" and call_.id
    jsonschema.validate(json.loads(call_.function.arguments), WEATHER["function"]["parameters"])
    streamed = list(client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=120,
                                                   tools=[WEATHER], tool_choice="required", stream=True))
    calls = [tc for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", call_.function.arguments)]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    follow = ASK + [choice.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call_.id, "content": '{"temp_c": 21}'}]
    after = client.chat.completions.create(model=MODEL_ID, messages=follow, temperature=0, max_tokens=8)
    assert after.choices[0].message.role == "assistant"
    named = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=120, tools=[WEATHER],
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_logprobs(client):
    answer = client.chat.completions.create(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=6,
                                            logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob <= 0 and entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    legacy = client.completions.create(model=MODEL_ID, prompt="The quick brown", temperature=0, max_tokens=5,
                                       logprobs=2)
    lp = legacy.choices[0].logprobs
    assert "".join(lp.tokens) == legacy.choices[0].text and len(lp.top_logprobs[0]) <= 2


def test_bad_structured_fields_are_named(model):
    with serving(model) as running:
        for param, extra in {"response_format": {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}},
                             "tools": {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
                             "tool_choice": {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}}}.items():
            status, body = call(running.url, "POST", "/v1/chat/completions",
                                {"model": MODEL_ID, "messages": ASK, "max_tokens": 4, **extra})
            assert status == 400 and body["error"]["param"] == param, body


def test_parallel_tool_calls_false_allows_one_call(client, model):
    """A bias towards "," after the first call's "}" makes the grammar's ", " (another call) the pick where it is
    allowed; parallel_tool_calls=false leaves only the closing "]"."""
    comma = model.tokenizer.encode(",", add_bos=False)
    assert len(comma) == 1
    kwargs = dict(model=MODEL_ID, messages=ASK, temperature=0, max_tokens=160, tools=[WEATHER],
                  tool_choice="required", logit_bias={str(comma[0]): 100})
    one = client.chat.completions.create(parallel_tool_calls=False, **kwargs).choices[0]
    assert one.finish_reason == "tool_calls" and len(one.message.tool_calls) == 1
    many = client.chat.completions.create(**kwargs).choices[0]
    assert not (many.finish_reason == "tool_calls" and len(many.message.tool_calls) == 1)
