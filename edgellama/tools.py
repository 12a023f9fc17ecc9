"""Tool calls: the tools in the prompt, the call constrained to them, the call parsed back.

    result = chat.send("Weather in Paris?", tools=[{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather", "parameters": {...}}}])
    if result.finish_reason == "tool_calls":
        call = result.tool_calls[0]              # .name, .arguments (a dict), .id
        chat.send_tool_result(call, {"temp_c": 21})

How each chat format shows the tools and writes a call is data (FORMATS), picked from the chat
template: a template that renders `tools` itself (Llama 3.1 / 3.2) gets them as the template variable
and the model answers with one JSON object; any other (SmolLM2, ChatML) gets them in the system
message and answers with a list of calls between <tool_call>[ and ]</tool_call>. The answer is
constrained (edgellama.constraint) to either plain text that does not begin like a call, or calls of
the declared functions whose arguments follow their `parameters` schemas; tool_choice="required"
leaves only the calls.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

from .constraint import JSON_LAYOUT, Constraint
from .errors import InvalidParameterError

TOOL_CHOICES = ("auto", "required")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")

SMOLLM2_PROMPT = """You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, point it out and refuse to answer.
If the given question lacks the parameters required by the function, also point it out.

You have access to the following tools:
<tools>{tools}</tools>

The output MUST strictly adhere to the following format, and NO other text MUST be included.
The example format is as follows. Please make sure the parameter type is correct.
<tool_call>[
{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},
... (more tool calls as required)
]</tool_call>"""


@dataclass(frozen=True)
class ToolFormat:
    """How one chat format offers tools and writes calls."""
    name: str
    call_open: str          # the text before the calls of an answer ("": the call's JSON object begins it)
    call_close: str         # ... and after them
    arguments_key: str      # the key of the arguments object in a call
    many: bool              # a list of calls (", " between them) or exactly one
    in_template: bool       # the chat template renders the `tools` variable; else a system message
    result_role: str        # the role of a tool result message

    @property
    def start(self) -> str:
        """What every call answer begins with (a plain answer must not)."""
        return self.call_open or "{"


FORMATS = {
    "llama3": ToolFormat("llama3", "", "", "parameters", many=False, in_template=True, result_role="ipython"),
    "smollm2": ToolFormat("smollm2", "<tool_call>[", "]</tool_call>", "arguments", many=True, in_template=False,
                          result_role="tool"),
}


def tool_format(template_source: str) -> ToolFormat:
    """The format of a chat template: Llama 3's when it renders tools for ipython, else SmolLM2's."""
    if "tools" in template_source and ("ipython" in template_source or "<|python_tag|>" in template_source):
        return FORMATS["llama3"]
    return FORMATS["smollm2"]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(6)}")


def check_tools(tools) -> tuple:
    """OpenAI-style tool definitions as a tuple of {"type": "function", "function": {name, description,
    parameters}} dicts (parameters default to an object without properties)."""
    if isinstance(tools, Mapping) or not isinstance(tools, Sequence) or not tools:
        raise InvalidParameterError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    out, names = [], set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(function, Mapping) or tool.get("type", "function") != "function":
            raise InvalidParameterError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            raise InvalidParameterError(f"tools[{i}]: the function name {name!r} must be a unique identifier")
        parameters = function.get("parameters", {"type": "object", "properties": {}, "additionalProperties": False})
        if not isinstance(parameters, Mapping):
            raise InvalidParameterError(f"tools[{i}] ({name}): parameters must be a JSON schema object")
        names.add(name)
        entry = {"name": name, "description": str(function.get("description", "")), "parameters": dict(parameters)}
        out.append({"type": "function", "function": entry})
    return tuple(out)


_DATA_KEYWORDS = ("const", "enum", "default", "examples")   # values that are data, not schemas


def _rooted(schema, root: str):
    """A tool's parameters schema placed at `root` of the call schema: its local references ("#...",
    such as "#/$defs/point") rewritten to start there, so that $defs and $ref work as in the tool's own."""
    if isinstance(schema, Mapping):
        return {key: (root + value[1:] if key == "$ref" and isinstance(value, str) and value.startswith("#")
                      else value if key in _DATA_KEYWORDS else _rooted(value, root))
                for key, value in schema.items()}
    if isinstance(schema, list):
        return [_rooted(value, root) for value in schema]
    return schema


def call_constraint(fmt: ToolFormat, tools: tuple, tool_choice: str = "auto", parallel: bool = True) -> Constraint:
    """Plain text that does not begin like a call, or calls of `tools` (only calls when "required");
    `parallel` False: one call at most, where the format could write several."""
    if tool_choice not in TOOL_CHOICES:
        raise InvalidParameterError(f"tool_choice={tool_choice!r} must be one of {TOOL_CHOICES}")
    variants = [{"type": "object", "additionalProperties": False, "required": ["name", fmt.arguments_key],
                 "properties": {"name": {"const": t["function"]["name"]},
                                fmt.arguments_key: {"$ref": f"#/$defs/{t['function']['name']}"}}} for t in tools]
    defs = {t["function"]["name"]: _rooted(t["function"]["parameters"], f"#/$defs/{t['function']['name']}")
            for t in tools}
    schema = json.dumps({"anyOf": variants, "$defs": defs, "x-guidance": JSON_LAYOUT})
    repeat = ' (", " call)*' if fmt.many and parallel else ""
    wrap = [json.dumps(fmt.call_open) if fmt.call_open else "", json.dumps(fmt.call_close) if fmt.call_close else ""]
    rules = [f"calls: {wrap[0]} call{repeat} {wrap[1]}", f"call: %json {schema}"]
    if tool_choice == "auto":
        first = re.escape(fmt.start[0])
        rules = ["start: calls | TEXT", *rules, f"TEXT: /[^{first}](.|\\n)*/"]
    else:
        rules = ["start: calls", *rules]
    return Constraint.grammar("\n".join(rules) + "\n")


def tool_messages(fmt: ToolFormat, messages: list, tools: Optional[tuple]) -> tuple[list, dict]:
    """The messages and template variables that show `tools` to the model (unchanged without tools)."""
    if not tools:
        return messages, {}
    if fmt.in_template:
        return messages, {"tools": list(tools)}
    listing = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    prompt = SMOLLM2_PROMPT.format(tools=listing)
    if messages and messages[0]["role"] == "system":
        system = dict(messages[0], content=f"{messages[0]['content']}\n\n{prompt}")
        return [system] + messages[1:], {}
    return [{"role": "system", "content": prompt}] + messages, {}


def result_message(fmt: ToolFormat, call: ToolCall, value) -> dict:
    """The message that gives the model a tool's result."""
    if not isinstance(call, ToolCall):
        raise InvalidParameterError(f"call must be a ToolCall from result.tool_calls, got {type(call).__name__}")
    content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return {"role": fmt.result_role, "content": content}


def parse_calls(fmt: ToolFormat, text: str) -> tuple:
    """The calls in a generated answer; () when it is plain text or an unfinished call."""
    if not text.startswith(fmt.start) or not text.endswith(fmt.call_close):
        return ()     # (a plain answer may be JSON too where calls have no markup: "42", "[1, 2]")
    body = text[:len(text) - len(fmt.call_close)] if fmt.call_close else text
    if fmt.many:
        body = "[" + body[len(fmt.call_open):]
        body += "]"
    try:
        calls = json.loads(body)
    except ValueError:
        return ()
    calls = calls if fmt.many else [calls]
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                              and isinstance(c.get(fmt.arguments_key), dict) for c in calls):
        return ()
    return tuple(ToolCall(c["name"], c[fmt.arguments_key]) for c in calls)


def begins_call(fmt: ToolFormat, text: str) -> bool:
    """Whether `text` is (the start of) a call: under the call constraint no plain answer begins with
    the first character of fmt.start, so an answer cut short there was a call."""
    return bool(text) and (text.startswith(fmt.start) or fmt.start.startswith(text))


def finish(fmt: ToolFormat, result):
    """The GenerationResult of a tool-call answer: its calls, finish_reason "tool_calls" and no text.
    A call cut short (max_new_tokens, a full context, a cancel) keeps its finish_reason and no text:
    its markup is no answer."""
    calls = parse_calls(fmt, result.text)
    if calls:    # the markup's tokens are no text of the answer: their logprobs go with it
        return replace(result, text="", tool_calls=calls, finish_reason="tool_calls", logprobs=())
    if begins_call(fmt, result.text):
        return replace(result, text="", logprobs=())
    return result


class ToolStream:
    """Iterates a TextStream of an answer that may be calls: text pieces (str) for a plain answer,
    then the ToolCall objects of a call answer once it is complete; `.result` when exhausted.
    `finished(raw)` turns the stream's result into the answer's (default: `finish`)."""

    def __init__(self, stream, fmt: ToolFormat, finished=None):
        self._stream, self._fmt = stream, fmt
        self._finished = finished or (lambda raw: finish(fmt, raw))
        self._held, self._is_call = "", None
        self._calls: list = []
        self.result = None

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._calls:
                return self._calls.pop(0)
            if self.result is not None:
                raise StopIteration
            try:
                piece = next(self._stream)
            except StopIteration:
                self.result = self._finished(self._stream.result)
                self._calls = list(self.result.tool_calls)   # text still held began a call: no answer
                continue
            if self._is_call is False:
                return piece
            self._held += piece
            if self._held.startswith(self._fmt.start):
                self._is_call = True
            elif not self._fmt.start.startswith(self._held):
                self._is_call, held, self._held = False, self._held, ""
                return held

    def close(self) -> None:
        self._stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def consume(self):
        for _ in self:
            pass
        return self.result
