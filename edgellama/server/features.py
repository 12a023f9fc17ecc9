"""What a chat or completion asks beyond plain text: response_format, tools / tool_choice, logprobs.

`plan(model, req)` decides once per request what the template, the generation and the answer carry
for these fields (a `Plan`), through edgellama's own constrained decoding (edgellama.constraint) and
tool calls (edgellama.tools); the routes only apply it. OpenAI's message forms map onto the chat
format's: an assistant message with `tool_calls` becomes the call text the model writes, a "tool"
message the format's result message.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Optional

from ..errors import InvalidParameterError
from .schema import ApiRequest, bad

UNLIKELY = -9999.0      # OpenAI's log-probability for a token that cannot follow (JSON has no -inf)


@dataclass(frozen=True)
class Plan:
    messages: Optional[list] = None                      # the messages as the chat template gets them
    template_extra: dict = field(default_factory=dict)   # more variables for the chat template
    options: dict = field(default_factory=dict)          # more GenerationOptions fields
    fmt: object = None                                   # edgellama.tools.ToolFormat when tools are offered
    logprobs: Optional[int] = None
    kind: str = "chat"
    echo: str = ""                                       # the prompt text a completion starts with (echo)
    prompt_head: tuple = ()                              # echo with logprobs: the prompt's first token's text,
                                                         # and where the prompt's decoded text starts in echo

    def wrap(self, stream):
        """The stream a job iterates: text pieces, and ToolCall objects when tools are offered."""
        if self.fmt is None:
            return stream
        from ..tools import ToolStream

        return ToolStream(stream, self.fmt)

    def extras(self, result) -> tuple:
        """(tool_calls, logprobs) of a finished answer, as OpenAI writes them (None: none)."""
        calls = [openai_call(call) for call in result.tool_calls] or None
        if self.logprobs is None:
            return calls, None
        if self.kind == "chat":
            return calls, {"content": [chat_logprob(lp, self.logprobs) for lp in result.logprobs], "refusal": None}
        head = completion_logprobs(result.prompt_logprobs, self.prompt_head[1], self.prompt_head[0]) \
            if self.prompt_head else None
        return calls, completion_logprobs(result.logprobs, len(self.echo), head=head)

    def with_prompt(self, tokenizer, ids) -> "Plan":
        """The plan of a completion once its prompt ids are known: an echo with logprobs lists the prompt's
        tokens first (offsets in the echoed text, which leaves out the special tokens a text prompt was
        given, such as a BOS)."""
        if not self.echo or self.logprobs is None:
            return self
        decoded = tokenizer.decode(ids, skip_special=False)
        return replace(self, prompt_head=(tokenizer.decode(ids[:1], skip_special=False), len(self.echo) - len(decoded)))

    def delta_calls(self, tool_calls):
        """The tool calls of a streamed answer's last chunk (each with its index)."""
        return [dict(call, index=i) for i, call in enumerate(tool_calls)] if tool_calls else None


def _finite(value: float) -> float:
    return value if math.isfinite(value) else UNLIKELY


def chat_logprob(lp, top: int) -> dict:
    # the token's own bytes: a token holding part of a character has the text U+FFFD, not its bytes
    entry = lambda t: {"token": t.text, "logprob": _finite(t.logprob), "bytes": list(t.token_bytes)}
    return {**entry(lp), "top_logprobs": [entry(t) for t in lp.top[:top]]}


def _top_by_text(top) -> dict:
    """The legacy form's alternatives, keyed by their text: of tokens with the same text (the byte pieces
    of a character all read U+FFFD) the most likely one's, as `top` lists them best first."""
    out = {}
    for t in top:
        out.setdefault(t.text, _finite(t.logprob))
    return out


def completion_logprobs(logprobs, shift: int = 0, first: Optional[str] = None, head: Optional[dict] = None) -> dict:
    """OpenAI's legacy logprobs of `logprobs` (TokenLogprob), their offsets moved by `shift` (not below 0).

    `first`: the text of a token listed before them with no log-probability (null), at offset 0: the
    prompt's first token, when `logprobs` are the prompt's (GenerationResult.prompt_logprobs). `head`:
    lists (the echoed prompt's) put in front of these."""
    out = {"tokens": [lp.text for lp in logprobs], "token_logprobs": [_finite(lp.logprob) for lp in logprobs],
           "top_logprobs": [_top_by_text(lp.top) for lp in logprobs],
           "text_offset": [max(0, shift + lp.offset) for lp in logprobs]}
    if first is not None:
        out = {"tokens": [first, *out["tokens"]], "token_logprobs": [None, *out["token_logprobs"]],
               "top_logprobs": [None, *out["top_logprobs"]], "text_offset": [0, *out["text_offset"]]}
    if head is not None:
        out = {key: head[key] + value for key, value in out.items()}
    return out


def openai_call(call) -> dict:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}


def _call_text(fmt, calls: list, where: str) -> str:
    """The text in which the model would have written OpenAI `tool_calls`."""
    written = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}.tool_calls[{i}]", "must be {\"type\": \"function\", \"function\": {\"name\", "
                                                   "\"arguments\"}}")
        arguments = function.get("arguments", "{}")
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise bad(f"{where}.tool_calls[{i}].function.arguments", "is not JSON") from None
        written.append(json.dumps({"name": function["name"], fmt.arguments_key: arguments}, ensure_ascii=False))
    if not fmt.many:
        return written[0] if written else ""
    return fmt.call_open + ", ".join(written) + fmt.call_close


def chat_messages(fmt, messages: list) -> list:
    """OpenAI's tool-call and tool-result messages in the chat format `fmt`."""
    out = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("tool_calls"):
            if not isinstance(message["tool_calls"], list):
                raise bad(f"messages[{i}].tool_calls", "must be a list")
            text = _call_text(fmt, message["tool_calls"], f"messages[{i}]")
            message = {"role": "assistant", "content": text}
        elif message["role"] == "tool":
            message = {"role": fmt.result_role, "content": message["content"]}
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _tools(req: ApiRequest) -> tuple:
    """(tools offered, tool_choice for edgellama.tools) from the request's tools and tool_choice."""
    from ..tools import check_tools

    choice = req.tool_choice if req.tool_choice is not None else "auto"
    if not req.tools or choice == "none":
        if choice not in ("none", "auto"):
            raise bad("tool_choice", f"{choice!r} needs 'tools'")
        return None, None
    try:
        tools = check_tools(req.tools)
    except InvalidParameterError as exc:
        raise bad("tools", str(exc)) from None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if choice.get("type") == "function" and isinstance(function, dict) else None
        chosen = tuple(t for t in tools if t["function"]["name"] == name)
        if not chosen:
            raise bad("tool_choice", f"names no function of 'tools' ({name!r})")
        return chosen, "required"
    if choice not in ("auto", "required"):
        raise bad("tool_choice", f"{choice!r} must be \"none\", \"auto\", \"required\" or a function")
    return tools, choice


def echo_text(model, req: ApiRequest) -> str:
    """The prompt as an echoing completion shows it: its text, or its token ids decoded."""
    if not req.echo:
        return ""
    if isinstance(req.prompt, str):
        return req.prompt
    return model.tokenizer.decode(req.prompt, skip_special=False)   # ids in the vocabulary (parse_request)


def plan(model, req: ApiRequest) -> Plan:
    """The plan of `req`; a field that cannot be honoured is refused by name."""
    from ..constraint import Constraint
    from ..tools import call_constraint, tool_format, tool_messages

    options = {}
    if req.logprobs is not None:
        options["logprobs"] = req.logprobs
        if req.echo:
            options["prompt_logprobs"] = req.logprobs
    if req.response_format is not None:
        try:
            constraint = Constraint.from_response_format(req.response_format)
        except InvalidParameterError as exc:
            raise bad("response_format", str(exc)) from None
        if constraint is not None:
            options["constraint"] = constraint
    if req.kind != "chat":
        return Plan(options=options, logprobs=req.logprobs, kind=req.kind, echo=echo_text(model, req))
    tools, choice = _tools(req)
    fmt = tool_format(model.chat_template.source)
    messages, extra = chat_messages(fmt, req.messages), {}
    if tools:
        if "constraint" in options:
            raise bad("response_format", "cannot be given with 'tools'")
        try:
            options["constraint"] = call_constraint(fmt, tools, choice, parallel=req.parallel_tool_calls)
        except InvalidParameterError as exc:
            raise bad("tools", str(exc)) from None
        messages, extra = tool_messages(fmt, messages, tools)
    return Plan(messages=messages, template_extra=extra, options=options, fmt=fmt if tools else None,
                logprobs=req.logprobs, kind=req.kind)
