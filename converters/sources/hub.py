"""Download a Hugging Face hub checkpoint (org/name) into the local hub cache."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from edgellama.errors import CheckpointError, ModelNotFoundError

log = logging.getLogger(__name__)

# Only what the converter reads; other weight formats are left on the hub.
ALLOW_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
ANSWER_WITHIN_S = 30.0    # the hub's answer to one query about the repository; huggingface_hub waits for ever
# a timeout as the hub's client raises it: httpx's (huggingface_hub 1 and later), requests' (0.x), Python's own
TIMEOUTS = {"TimeoutException", "Timeout", "TimeoutError"}


def _hub_silent(repo_id: str, revision: Optional[str]) -> bool:
    """Whether the hub leaves a query about `repo_id` unanswered for ANSWER_WITHIN_S (a network that takes
    connections and never answers); any other outcome, an error included, is snapshot_download's to meet."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=ANSWER_WITHIN_S)
    except Exception as exc:  # noqa: BLE001 - only a timeout is told apart; the client's classes are its own
        return any(cls.__name__ in TIMEOUTS for cls in type(exc).__mro__)
    return False


def download(repo_id: str, revision: Optional[str] = None) -> Path:
    """Local folder holding `repo_id` (downloaded on first use)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelNotFoundError(
            f"{repo_id!r} looks like a Hugging Face hub id, and downloading it needs huggingface_hub: "
            "`pip install huggingface_hub` (or pass a local checkpoint folder)") from None
    log.info("downloading %s from the Hugging Face hub", repo_id)
    if _hub_silent(repo_id, revision):
        try:                  # a copy downloaded before serves without the hub
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                          local_files_only=True))
        except Exception:     # noqa: BLE001 - none in the cache
            raise CheckpointError(f"cannot download {repo_id!r}: the Hugging Face hub did not answer within "
                                  f"{ANSWER_WITHIN_S:g} s; check the network (a proxy, HF_ENDPOINT) or give a local "
                                  "checkpoint folder") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # network, authentication and missing-repository errors alike
        said = " ".join(str(exc).split())[:300]      # the hub's errors run to several lines: one
        raise CheckpointError(f"cannot download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: "
                              f"{said}); check the id and the network, or give a local checkpoint folder") from None
