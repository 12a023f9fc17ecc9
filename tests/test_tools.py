"""Tool calls: definitions checked, tools shown through the chat template (SmolLM2's and Llama 3's
formats), calls constrained to the declared functions and parsed back, streaming, tool results."""
from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from helpers.tiny_llama import convert_tiny, make_tiny_llama

import edgellama
from edgellama import InvalidParameterError, SamplingParams
from edgellama.package import MANIFEST, sha256_file
from edgellama.tools import FORMATS, ToolCall, check_tools, parse_calls, tool_format

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["a", "b"],
                   "properties": {"a": {"type": "integer", "minimum": -1000, "maximum": 1000},
                                  "b": {"type": "integer", "minimum": -1000, "maximum": 1000}}}}}
TOOLS = [WEATHER, ADD]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
# Llama 3.1's way with tools, cut to what matters here: the tools in the first user message, one
# JSON object per call, results in "ipython" messages
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if loop.first and tools is not none and message['role'] == 'user' %}"
    "<|im_start|>user\nGiven the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\nRespond in the format {\"name\": function name, "
    "\"parameters\": dictionary of argument name and its value}.\n\n{% for t in tools %}{{ t | tojson(indent=4) }}"
    "\n\n{% endfor %}{{ message['content'] }}<|im_end|>\n"
    "{% elif message['role'] == 'ipython' %}<|im_start|>ipython\n{{ message['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def assert_valid(calls):
    assert calls
    for call in calls:
        assert call.name in PARAMETERS and call.id.startswith("call_")
        jsonschema.validate(call.arguments, PARAMETERS[call.name])


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    # the tiny tokenizer spends many tokens on the tools' description: a long context
    folder = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny", max_position_embeddings=2048)
    chatml = convert_tiny(folder, tmp_path_factory.mktemp("pkg") / "tiny-chatml", max_length=2048)
    llama = tmp_path_factory.mktemp("pkg") / "tiny-llama3"
    shutil.copytree(chatml, llama, dirs_exist_ok=True)
    config = json.loads((llama / "tokenizer_config.json").read_text())
    config["chat_template"] = LLAMA3_TEMPLATE
    (llama / "tokenizer_config.json").write_text(json.dumps(config))
    manifest = json.loads((llama / MANIFEST).read_text())      # the package records each file's sha256
    manifest["files"]["tokenizer_config.json"] = sha256_file(llama / "tokenizer_config.json")
    (llama / MANIFEST).write_text(json.dumps(manifest))
    return {"chatml": chatml, "llama3": llama}


@pytest.fixture(scope="module")
def models(packages):
    return {name: edgellama.load(path, threads=1) for name, path in packages.items()}


@pytest.mark.parametrize("tools, words", [
    ([], "non-empty list"), ({"type": "function"}, "non-empty list"),
    ([{"type": "retrieval"}], "must be"), ([{"function": {"name": "bad name"}}], "unique identifier"),
    ([ADD, ADD], "unique identifier"), ([{"function": {"name": "f", "parameters": [1]}}], "JSON schema"),
])
def test_tool_definitions_are_checked(tools, words):
    with pytest.raises(InvalidParameterError, match=words):
        check_tools(tools)


def test_the_format_follows_the_template(models):
    assert tool_format(models["chatml"].chat_template.source) is FORMATS["smollm2"]
    assert tool_format(models["llama3"].chat_template.source) is FORMATS["llama3"]


def test_calls_are_parsed_in_both_formats():
    smol = parse_calls(FORMATS["smollm2"], '<tool_call>[{"name": "add", "arguments": {"a": 1, "b": 2}}, '
                                           '{"name": "add", "arguments": {"a": 3, "b": 4}}]</tool_call>')
    assert [(c.name, c.arguments) for c in smol] == [("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})]
    llama = parse_calls(FORMATS["llama3"], '{"name": "add", "parameters": {"a": 1, "b": 2}}')
    assert [(c.name, c.arguments) for c in llama] == [("add", {"a": 1, "b": 2})]
    assert parse_calls(FORMATS["smollm2"], "plain text") == ()
    assert parse_calls(FORMATS["smollm2"], '<tool_call>[{"name": "add", "argu') == ()
    for plain in ("42", "null", "[1, 2]", ' {"a": 1}', '{"a": 1}', '{"name": 3, "parameters": {}}'):
        assert parse_calls(FORMATS["llama3"], plain) == ()     # JSON, but no call: a plain answer


@pytest.mark.parametrize("fmt", ["chatml", "llama3"])
@pytest.mark.parametrize("seed", [None, 3, 11])
def test_required_calls_validate_and_the_conversation_goes_on(models, fmt, seed):
    model = models[fmt]
    sampling = SamplingParams.greedy() if seed is None else SamplingParams(seed=seed, temperature=1.0)
    chat = model.new_chat(max_new_tokens=120, sampling=sampling)
    result = chat.send("What is 2 plus 3?", tools=TOOLS, tool_choice="required")
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert_valid(result.tool_calls)
    prompt = model.tokenizer.decode(result.prompt_token_ids, skip_special=False)
    assert "get_weather" in prompt and "The current weather in a city" in prompt
    raw = chat.messages[-1]["content"]
    assert raw.startswith(FORMATS["smollm2" if fmt == "chatml" else "llama3"].start)
    answer = chat.send_tool_result(result.tool_calls[0], {"value": 5})
    assert chat.messages[-2] == {"role": FORMATS["smollm2" if fmt == "chatml" else "llama3"].result_role,
                                 "content": '{"value": 5}'}
    assert answer.finish_reason in ("tool_calls", "eos", "length")
    if answer.finish_reason == "tool_calls":
        assert_valid(answer.tool_calls)


@pytest.mark.parametrize("seed", range(6))
def test_auto_gives_text_or_valid_calls(models, seed):
    chat = models["chatml"].new_chat(max_new_tokens=60, sampling=SamplingParams(seed=seed, temperature=1.0))
    result = chat.send("Weather in Oslo?", tools=TOOLS)
    if result.finish_reason == "tool_calls":
        assert_valid(result.tool_calls)
    else:
        assert not result.text.startswith("<") and result.tool_calls == ()


def test_streaming_yields_the_completed_calls(models):
    chat = models["chatml"].new_chat(max_new_tokens=120, sampling=SamplingParams(seed=2))
    items = list(chat.stream("Add 1 and 2", tools=TOOLS, tool_choice="required"))
    assert items and all(isinstance(item, ToolCall) for item in items)
    assert chat.last_result.tool_calls == tuple(items)
    assert_valid(items)


def test_tools_and_a_constraint_together_are_refused(models):
    chat = models["chatml"].new_chat()
    with pytest.raises(InvalidParameterError, match="not both"):
        chat.send("x", tools=TOOLS, response_format={"type": "json_object"})
    with pytest.raises(InvalidParameterError, match="tool_choice"):
        chat.send("x", tools=TOOLS, tool_choice="sometimes")
    with pytest.raises(InvalidParameterError, match="ToolCall"):
        chat.send_tool_result({"name": "add"}, 1)
    assert chat.messages == []


@pytest.mark.slow
@pytest.mark.parametrize("sampling", [SamplingParams.greedy(), SamplingParams(seed=5, temperature=0.8)],
                         ids=["greedy", "sampled"])
def test_smollm2_calls_a_declared_function(smollm2_int4_package, sampling):
    model = edgellama.load(smollm2_int4_package)
    chat = model.new_chat(sampling=sampling, max_new_tokens=120)
    result = chat.send("What is the weather like in Paris, in celsius?", tools=TOOLS, tool_choice="required")
    assert result.finish_reason == "tool_calls"
    assert_valid(result.tool_calls)
    answer = chat.send_tool_result(result.tool_calls[0], {"temperature": 21, "sky": "clear"})
    assert answer.finish_reason in ("eos", "tool_calls", "length")


POINTS = {"$defs": {"pt": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                           "properties": {"x": {"enum": [0, 1, 2]}, "y": {"enum": [0, 1, 2]}}}},
          "type": "object", "additionalProperties": False, "required": ["points"],
          "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/pt"}, "minItems": 1, "maxItems": 2}}}


@pytest.mark.parametrize("seed", [None, 3, 11])
def test_parameters_with_defs_and_a_function_without_parameters(models, seed):
    """A tool's own $defs and $ref hold in the call (its schema sits under the call schema's root), and a
    function declared without parameters takes none: {} (OpenAI's empty parameter list)."""
    sampling = SamplingParams.greedy() if seed is None else SamplingParams(seed=seed, temperature=1.0)
    plot = {"type": "function", "function": {"name": "plot", "parameters": POINTS}}
    chat = models["chatml"].new_chat(max_new_tokens=600, sampling=sampling)
    result = chat.send("Plot the point (1, 2).", tools=[plot], tool_choice="required")
    assert result.finish_reason == "tool_calls"
    for call in result.tool_calls:
        jsonschema.validate(call.arguments, POINTS)
    chat = models["chatml"].new_chat(max_new_tokens=600, sampling=sampling)
    result = chat.send("Ping it.", tools=[{"type": "function", "function": {"name": "ping"}}], tool_choice="required")
    assert result.finish_reason == "tool_calls" and [c.arguments for c in result.tool_calls] == [{}] * len(
        result.tool_calls)


@pytest.mark.parametrize("fmt", ["chatml", "llama3"])
def test_a_call_cut_short_leaves_no_markup(models, fmt):
    """max_new_tokens ends a required call before it closes: no calls, no text, finish_reason length,
    streamed or not."""
    chat = models[fmt].new_chat(max_new_tokens=3, sampling=SamplingParams(seed=2))
    result = chat.send("Add 1 and 2", tools=TOOLS, tool_choice="required")
    assert result.finish_reason == "length" and result.text == "" and result.tool_calls == ()
    raw = chat.messages[-1]["content"]           # the conversation keeps what the model wrote
    assert raw and FORMATS["smollm2" if fmt == "chatml" else "llama3"].start.startswith(raw[:1])
    chat.reset()
    assert list(chat.stream("Add 1 and 2", tools=TOOLS, tool_choice="required")) == []
    assert chat.last_result.text == "" and chat.last_result.finish_reason == "length"


def test_a_tool_result_answers_a_call_the_chat_made(models):
    model = models["chatml"]
    chat = model.new_chat(max_new_tokens=120, sampling=SamplingParams.greedy())
    with pytest.raises(InvalidParameterError, match="no call this Chat's answers made"):
        chat.send_tool_result(ToolCall("add", {"a": 1, "b": 2}), 3)          # nothing was called
    result = chat.send("Add 1 and 2", tools=TOOLS, tool_choice="required")
    other = model.new_chat(max_new_tokens=120, sampling=SamplingParams.greedy())
    with pytest.raises(InvalidParameterError, match="no call this Chat's answers made"):
        other.send_tool_result(result.tool_calls[0], 3)                       # another Chat's call
    assert chat.send_tool_result(result.tool_calls[0], 3).finish_reason in ("tool_calls", "eos", "length")


def test_the_turn_after_a_call_renders_as_the_conversation_does(smollm2_int4_package):
    """A call's tokens are the grammar's, not its text's tokenization: the next turn goes on from the
    text's own, so the same conversation given afresh (messages reassigned) makes the same prompt and
    answer (SmolLM2 writes this call in tokens its tokenizer would not choose)."""
    chat = edgellama.load(smollm2_int4_package, threads=2).new_chat(max_new_tokens=60,
                                                                       sampling=SamplingParams.greedy())
    weather = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
               "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
    call = chat.send("What is the weather in Paris?", tools=[weather], tool_choice="required").tool_calls[0]
    history = chat.messages
    kept = chat.send_tool_result(call, "sunny, 21C")
    chat.messages = history
    again = chat.send_tool_result(call, "sunny, 21C")
    assert kept.prompt_token_ids == again.prompt_token_ids and kept.token_ids == again.token_ids
