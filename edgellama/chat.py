"""Chat: the package's chat template, rendered in a Jinja sandbox, and a conversation object.

Message contents are never parsed for special tokens. The template is rendered with a unique
sentinel in place of each content; the rendered text is split at the sentinels, the template's
own text is tokenized with special tokens and each content as plain text:

    "<|im_start|>user\\n" + @@S_1@@ + "<|im_end|>\\n<|im_start|>assistant\\n"
     '---- specials ----'   '-plain-'   '------------- specials ------------'

A `Chat` owns a context, so the KV cache survives between turns: a new turn runs only the
tokens after the previous answer (the end of that answer, the user's message, the prompt for
the next answer).
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from .errors import ChatBusyError, InvalidParameterError, PackageError, SavedStateError
from .generation import GenerationOptions, GenerationResult, TextStream
from .package import TOKENIZER_CONFIG_FILE

log = logging.getLogger(__name__)


def _sandbox():
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class StrictSandbox(ImmutableSandboxedEnvironment):
        """Unsafe attribute access raises at once instead of rendering as empty."""

        def unsafe_undefined(self, obj, attribute):
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def raise_exception(message):
        from jinja2.exceptions import TemplateError
        raise TemplateError(message)

    env = StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value) -> str:
    if isinstance(value, Mapping):
        return str(value.get("content", ""))
    return "" if value is None else str(value)


_ROLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")   # the template writes a role as it is: no markup in it


def _check_messages(messages) -> list[dict]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidParameterError(f"messages must be a list of {{'role': ..., 'content': ...}} mappings, got "
                                    f"{type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise InvalidParameterError(f"message {i} must be a mapping with 'role' and 'content'")
        role = message["role"]
        if not isinstance(role, str) or not _ROLE.match(role):
            raise InvalidParameterError(f"message {i}: role {role!r} must be a name such as 'user' (letters, digits, "
                                        "_ and -)")
        if not isinstance(message["content"], str):
            raise InvalidParameterError(f"message {i}: content must be a str")
        out.append(dict(message))
    return out


class ChatTemplate:
    """The package's chat template, compiled once in a sandbox."""

    def __init__(self, source: str, tokenizer, where: str = TOKENIZER_CONFIG_FILE):
        from jinja2.exceptions import TemplateSyntaxError

        self.where = where
        self.source = source
        self.tokenizer = tokenizer
        try:
            self._template = _sandbox().from_string(source)
        except TemplateSyntaxError as exc:
            raise PackageError(f"{where}: chat_template does not compile ({exc})") from None
        config = tokenizer.config
        self._variables = {name: _token_text(config.get(name))
                           for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self._specials = [t for t in (tokenizer.token_text(i) for i in tokenizer.special_ids) if t]

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True, **extra) -> str:
        """The prompt text (special tokens as strings), as the template writes it."""
        from jinja2.exceptions import SecurityError, TemplateError

        try:
            return self._template.render(messages=_check_messages(messages),
                                         add_generation_prompt=add_generation_prompt,
                                         **self._variables, **extra)
        except SecurityError as exc:
            raise PackageError(f"{self.where}: chat_template tried an unsafe operation ({exc})") from None
        except TemplateError as exc:
            raise PackageError(f"{self.where}: chat_template failed to render ({exc})") from None

    def segments(self, messages, add_generation_prompt: bool = True, **extra) -> list[tuple]:
        """[(text, message index or None)]: template text (None) and message contents, in order;
        `extra`: more template variables (such as `tools`)."""
        messages = _check_messages(messages)
        nonce = sentinel_nonce()
        marks = [f"@@EDGELLAMA_{nonce}_{i}@@" for i in range(len(messages))]
        masked = [dict(m, content=mark) for m, mark in zip(messages, marks)]
        text = self.render(masked, add_generation_prompt, **extra)
        pattern = re.compile(f"@@EDGELLAMA_{nonce}_(\\d+)@@")
        parts, pos = [], 0
        for match in pattern.finditer(text):
            parts.append((text[pos:match.start()], None))
            index = int(match.group(1))
            parts.append((messages[index]["content"], index))
            pos = match.end()
        parts.append((text[pos:], None))
        seen = [i for _, i in parts if i is not None]
        if sorted(seen) != list(range(len(messages))):
            return self._unmasked(messages, add_generation_prompt, **extra)
        return parts

    def _unmasked(self, messages, add_generation_prompt, **extra) -> list[tuple]:
        # The template transforms contents (so the sentinels did not survive): render the real text,
        # which is safe to parse for specials only when no content spells a special token.
        for i, message in enumerate(messages):
            for special in self._specials:
                if special in message["content"]:
                    raise InvalidParameterError(
                        f"message {i} contains the special token {special!r} and the chat template in "
                        f"{self.where} rewrites contents, so it cannot be kept as plain text; remove it")
        return [(self.render(messages, add_generation_prompt, **extra), None)]

    def encode_segments(self, messages, add_generation_prompt: bool = True,
                        content_ids: Optional[Mapping[int, Sequence[int]]] = None, **extra) -> list[tuple]:
        """[(ids, message index or None)]; `content_ids` replaces the tokens of given messages."""
        out = []
        for text, index in self.segments(messages, add_generation_prompt, **extra):
            if index is None:
                ids = self.tokenizer.encode(text, add_bos=False, parse_special=True)
            elif content_ids and index in content_ids:
                ids = list(content_ids[index])
            else:
                ids = self.tokenizer.encode(text, add_bos=False, parse_special=False)
            out.append((ids, index))
        return out

    def encode(self, messages, add_generation_prompt: bool = True,
               content_ids: Optional[Mapping[int, Sequence[int]]] = None, **extra) -> list[int]:
        """Token ids of the rendered conversation (contents as plain text)."""
        return [t for ids, _ in self.encode_segments(messages, add_generation_prompt, content_ids, **extra)
                for t in ids]


def sentinel_nonce() -> str:
    """12 random lowercase letters: the sentinels that stand for contents are upper case around them,
    so a template that changes the case of contents changes every sentinel (a nonce of digits alone,
    which hex gave one render in about 300, survived `| upper`, and the rewrite went unnoticed)."""
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(12))


def load_template(tokenizer, folder) -> ChatTemplate:
    """The chat template of the package at `folder` (tokenizer_config.json), compiled."""
    where = Path(folder) / TOKENIZER_CONFIG_FILE
    source = tokenizer.config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {item.get("name"): item.get("template") for item in source if isinstance(item, Mapping)}
        source = named.get("default")
    if not isinstance(source, str) or not source:
        raise PackageError(f"{where}: no chat_template; this model has no chat "
                           "format (use generate() with a plain prompt)")
    return ChatTemplate(source, tokenizer, str(where))


def _check_system(system) -> Optional[str]:
    if system is not None and not isinstance(system, str):
        raise InvalidParameterError(f"system={system!r} must be a string or None")
    return system


class Chat:
    """A conversation that keeps its KV cache between turns.

        chat = model.new_chat(system="You are terse.")
        print(chat.send("Hi!").text)
        for piece in chat.stream("And then?"):
            ...
        chat.send("Weather in Paris?", tools=[...])    # result.tool_calls, see edgellama.tools
        chat.reset()            # back to the system message, cache emptied
    """

    def __init__(self, model, system: Optional[str] = None, max_new_tokens: int = 256, sampling=None,
                 stop: Iterable[str] = (), on_overflow: str = "error"):
        self.model = model
        self.template = model.chat_template
        self.options = GenerationOptions(max_new_tokens=max_new_tokens, stop=stop, on_overflow=on_overflow)
        self.sampling = sampling
        self._system = _check_system(system)
        self._messages: list[dict] = []
        self.context = model.new_context()
        self.last_result: Optional[GenerationResult] = None
        self._base: Optional[list[int]] = None  # ids of the conversation through the last answer
        self._turn = threading.Lock()           # held from a message's start to the end of its answer
        self._tools: Optional[tuple] = None     # the tools shown in the prompt (edgellama.tools)
        self.reset()

    @property
    def system(self) -> Optional[str]:
        """The system message; assign one (or None) to put it in place of the conversation's, which goes on
        from there (the cache keeps what comes before it)."""
        return self._system

    @system.setter
    def system(self, system: Optional[str]) -> None:
        system = _check_system(system)
        with self._exclusive():
            rest = self._messages[1:] if self._messages and self._messages[0]["role"] == "system" else self._messages
            head = [{"role": "system", "content": system}] if system is not None else []
            self._system, self._messages, self._base = system, head + rest, None

    @property
    def messages(self) -> list[dict]:
        """The conversation so far, as a copy; assign a list of messages to replace it (the cache
        keeps what the new conversation shares with the old one). Its leading system message, or none,
        becomes `system`, which reset() keeps."""
        return [dict(m) for m in self._messages]

    @messages.setter
    def messages(self, messages) -> None:
        checked = _check_messages(messages)
        system = checked[0]["content"] if checked and checked[0]["role"] == "system" else None
        with self._exclusive():
            self._system, self._messages, self._base, self.last_result = system, checked, None, None

    def _claim(self) -> None:
        if not self._turn.acquire(blocking=False):
            raise ChatBusyError("this Chat is still answering a message (a send on another thread or a stream "
                                "not read to its end): a Chat takes one message at a time; wait for the answer, "
                                "close the stream, or give each thread its own Chat")

    @contextmanager
    def _exclusive(self):
        self._claim()
        try:
            yield
        finally:
            self._turn.release()

    def reset(self) -> None:
        """Forget the conversation (the system message stays) and empty the cache."""
        with self._exclusive():
            self._messages = [{"role": "system", "content": self.system}] if self.system is not None else []
            self._base = None
            self._tools = None
            self._calls: set = set()       # ids of the calls the answers made, which results may answer
            self.last_result = None
            self.context.reset()

    def _prompt(self) -> tuple[list[int], Optional[int]]:
        """Ids for the next answer, and how many leading ids a context shift keeps (the system message; None
        without one: the generation's default, a BOS or the first few ids)."""
        from .tools import tool_format, tool_messages

        messages, extra = tool_messages(tool_format(self.template.source), self._messages, self._tools)
        segments = self.template.encode_segments(messages, add_generation_prompt=True, **extra)
        n_keep = None
        if messages and messages[0]["role"] == "system":
            system = sum(len(ids) for ids, _ in segments[:3])    # template head, system text, its closing
            n_keep = min(system, self.context.capacity // 2)     # as much of it as a shift may keep
        if self._base is None:
            return [t for ids, _ in segments for t in ids], n_keep
        last_answer = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        at = max(k for k, (_, index) in enumerate(segments) if index == last_answer)
        return self._base + [t for ids, _ in segments[at + 1:] for t in ids], n_keep

    def _fit(self, ids: list, n_keep: Optional[int]) -> tuple[list[int], Optional[int]]:
        """With on_overflow="shift", a prompt over half the context drops the conversation's oldest
        exchanges (a user message and what answered it; the system message and the turn being answered,
        from its user message on, stay) until it fits in half, so that it starts at a turn with room for
        the answer. A last message that does not fit alone is
        cut by the generation (its middle), and an answer that fills the context drops the oldest half
        of what follows the system message (edgellama.generation)."""
        if self.options.on_overflow != "shift":
            return ids, n_keep
        first = 1 if self._messages and self._messages[0]["role"] == "system" else 0
        users = [i for i, m in enumerate(self._messages) if m["role"] == "user"]
        current = users[-1] if users else first     # the turn being answered (a tool result's question too)
        while len(ids) > self.context.capacity // 2 and first < current:
            end = first + 1          # the oldest exchange: up to the next user message
            while end < current and self._messages[end]["role"] != "user":
                end += 1
            del self._messages[first:end]
            current -= end - first
            self._base = None
            ids, n_keep = self._prompt()
        return ids, n_keep

    def stream(self, text: str, cancel=None, constraint=None, response_format=None, tools=None,
               tool_choice: str = "auto"):
        """Send a user message; yield the answer as text pieces (`.result` when done).

        constraint / response_format: what the answer must match (edgellama.Constraint, or OpenAI's
        response_format). tools: functions the model may call (edgellama.tools); the stream then
        yields the text, or the completed ToolCall objects, and `.result.tool_calls` holds them."""
        if not isinstance(text, str):
            raise InvalidParameterError(f"chat message must be a str, got {type(text).__name__}")
        return self._answer({"role": "user", "content": text}, cancel, constraint, response_format, tools,
                            tool_choice)

    def send(self, text: str, cancel=None, constraint=None, response_format=None, tools=None,
             tool_choice: str = "auto") -> GenerationResult:
        """Send a user message; return the whole answer (finish_reason "tool_calls" when it calls tools)."""
        return self.stream(text, cancel, constraint, response_format, tools, tool_choice).consume()

    def send_tool_result(self, call, value, cancel=None, tool_choice: str = "auto") -> GenerationResult:
        """Give the model the result of `call` (a ToolCall of the last answer; `value`: a str or
        anything JSON can write) and return its next answer; the same tools stay offered."""
        from .tools import ToolCall, result_message, tool_format

        if isinstance(call, ToolCall) and call.id not in self._calls:
            raise InvalidParameterError(f"call {call.id} is no call this Chat's answers made (since its last reset); "
                                        "give a ToolCall from result.tool_calls")
        message = result_message(tool_format(self.template.source), call, value)
        return self._answer(message, cancel, None, None, self._tools, tool_choice).consume()

    def _answer(self, message: dict, cancel, constraint, response_format, tools, tool_choice):
        """Add `message` and start the answer to it, constrained or offered tools."""
        from .constraint import Constraint
        from .tools import ToolStream, call_constraint, check_tools, tool_format

        constraint = Constraint.pick(constraint, response_format)
        fmt = tool_format(self.template.source)
        if tools is not None:
            if constraint is not None:
                raise InvalidParameterError("give tools or a constraint, not both")
            tools = check_tools(tools)
            constraint = call_constraint(fmt, tools, tool_choice)
        self._claim()                   # released when the answer ends (_end_turn)
        if tools != self._tools:        # the tools shown in the prompt changed: render it anew
            self._base, self._tools = None, tools
        before = list(self._messages), self._base      # what a refused message leaves (_fit may drop turns)
        self._messages.append(message)
        try:
            ids, n_keep = self._fit(*self._prompt())
            options = replace(self.options, n_keep=n_keep, constraint=constraint)
            stream = self.model.start(ids, options, self.sampling, cancel, ctx=self.context, on_end=self._end_turn,
                                      finish_on_close=True)   # a stream closed early keeps its answer so far
        except BaseException:
            self._messages, self._base = before
            self._turn.release()
            raise
        return ToolStream(stream, fmt, lambda _raw: self.last_result) if tools else stream

    def save(self, path) -> None:
        """Write the conversation, its settings and its KV cache to the file `path`, for
        `Model.load_chat` (edgellama.saved: tied to this package, checked when read)."""
        from .saved import write_saved

        with self._exclusive():
            sampling = None if self.sampling is None else asdict(self.sampling)
            meta = {"system": self.system, "messages": self._messages, "base": self._base, "sampling": sampling,
                    "options": {"max_new_tokens": self.options.max_new_tokens, "stop": list(self.options.stop),
                                "on_overflow": self.options.on_overflow},
                    "tools": list(self._tools) if self._tools else None}
            write_saved(path, "chat", self.model.info, meta, self.context)

    @classmethod
    def load(cls, model, path) -> "Chat":
        """The chat saved at `path` (see `save`), its cache restored: nothing already said runs again."""
        from .saved import read_saved
        from .sampling import SamplingParams
        from .tools import check_tools

        chat = cls(model)
        meta = read_saved(path, "chat", model.info, chat.context)
        try:
            sampling = meta["sampling"]
            chat.options = GenerationOptions(**meta["options"])
            chat.sampling = None if sampling is None else SamplingParams(**sampling)
            chat._system, chat._messages = _check_system(meta["system"]), _check_messages(meta["messages"])
            chat._base = None if meta["base"] is None else [int(t) for t in meta["base"]]
            chat._tools = check_tools(meta["tools"]) if meta.get("tools") else None
        except (KeyError, TypeError, ValueError) as exc:
            chat.context.reset()
            raise SavedStateError(f"{str(path)!r}: its conversation fields are malformed ({exc})") from None
        return chat

    def _end_turn(self, result: Optional[GenerationResult]) -> None:
        """Record the answer of a completed turn; forget the user message of one that failed."""
        try:
            self._record(result)
        finally:
            self._turn.release()

    def _record(self, result: Optional[GenerationResult]) -> None:
        from .tools import begins_call, finish, tool_format

        if result is None:
            self._messages.pop()
            return
        self._messages.append({"role": "assistant", "content": result.text})
        fmt = tool_format(self.template.source)
        if result.finish_reason == "stop" or self.options.max_new_tokens == 0 or (
                self._tools and begins_call(fmt, result.text)):
            # the text was cut, or nothing ran, or it is a call (whose tokens the grammar forced, not the
            # text's own): go on from the plain tokens of the answer, as the conversation renders afresh
            self._base = list(result.prompt_token_ids) + self.model.tokenizer.encode(result.text, add_bos=False)
        else:
            self._base = self.context.tokens.tolist()   # the context recorded the prompt and the answer
        self.last_result = finish(fmt, result) if self._tools else result
        self._calls.update(call.id for call in self.last_result.tool_calls)
