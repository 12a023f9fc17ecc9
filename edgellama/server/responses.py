"""OpenAI response objects: chat.completion, chat.completion.chunk, text_completion, usage, models.

edgellama's finish reasons map onto OpenAI's: "eos" and "stop" -> "stop", "length" and
"context_full" (the context is full) -> "length", "tool_calls" stays.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Optional

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "context_full": "length",
                  "tool_calls": "tool_calls", "cancelled": "stop"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def finish_reason(result) -> str:
    return FINISH_REASONS.get(result.finish_reason, "stop")


def usage(result) -> dict:
    prompt = result.timings.prompt_tokens
    completion = result.timings.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.timings.reused_tokens}}


def sse(obj) -> str:
    """One server-sent event carrying `obj` as JSON ("[DONE]" as itself)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


class Reply:
    """The objects of one answer: the same id, creation time and model in each."""

    def __init__(self, kind: str, model: str):
        self.kind = kind
        self.model = model
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    # -- whole answers ------------------------------------------------------------------------
    def complete(self, result, text: str, tool_calls: Optional[list] = None, logprobs=None) -> dict:
        if self.kind == "chat":
            message = {"role": "assistant", "content": None if tool_calls else text, "refusal": None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason(result)}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(result)}
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(result)}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(result)}

    # -- streamed answers ---------------------------------------------------------------------
    def chunk(self, text: Optional[str] = None, role: bool = False, result=None, tool_calls=None,
              logprobs=None) -> dict:
        """A chunk with `text` (or the opening role, or the closing finish reason when `result`)."""
        finish = finish_reason(result) if result is not None else None
        if self.kind == "chat":
            delta = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, result) -> dict:
        head = self._head("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        return {**head, "choices": [], "usage": usage(result)}


def model_object(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "edgellama"}


def model_list(model_id: str, created: int) -> dict:
    return {"object": "list", "data": [model_object(model_id, created)]}
