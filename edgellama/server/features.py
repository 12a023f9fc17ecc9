"""What a request asks beyond plain text: response_format, tools / tool_choice, logprobs.

`plan(model, req)` decides once per request what the template, the generation options and the
answer carry for these fields (a `Plan`); the routes only apply it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .schema import UNSUPPORTED, ApiRequest, bad


@dataclass(frozen=True)
class Plan:
    template_extra: dict = field(default_factory=dict)   # more variables for the chat template
    options: dict = field(default_factory=dict)          # more GenerationOptions fields

    def pieces(self, job):
        """The text pieces of the answer as they come."""
        return job

    def extras(self, result) -> tuple:
        """(tool_calls, logprobs) of a finished answer, as OpenAI writes them (None: none)."""
        return None, None

    def delta_calls(self, tool_calls):
        """The tool calls of a streamed answer's last chunk."""
        return tool_calls


def plan(model, req: ApiRequest) -> Plan:
    """The plan of `req`; a field this build cannot honour is refused by name."""
    response_format = req.response_format
    if response_format is not None and not (isinstance(response_format, dict)
                                            and response_format.get("type") == "text"):
        raise bad("response_format", f"{UNSUPPORTED} (only {{\"type\": \"text\"}})")
    if req.tools:
        raise bad("tools", UNSUPPORTED)
    if req.tool_choice not in (None, "none", "auto"):
        raise bad("tool_choice", UNSUPPORTED)
    if req.logprobs is not None:
        raise bad("logprobs", UNSUPPORTED)
    return Plan()
