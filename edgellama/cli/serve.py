"""`edgellama serve MODEL`: the OpenAI-compatible server (edgellama.server) on uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InvalidParameterError, NotBuiltError
from . import add_kv_cache_argument, add_mmap_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model package folder (from `edgellama convert`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="threads (default: physical cores)")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="KV-cache capacity of each context (default: the package's max_length)")
    parser.add_argument("--parallel", type=int, default=2, metavar="N",
                        help="requests generating at once, each on its own context (default 2)")
    parser.add_argument("--queue", type=int, default=16, metavar="N",
                        help="requests waiting for a context; more are answered 429 (default 16)")
    parser.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                        help="largest request body; larger are answered 413 (default 1 MiB)")
    parser.add_argument("--api-key", default=None, metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on /v1 requests (default: no key)")
    parser.add_argument("--model-id", default=None, metavar="NAME",
                        help="the model's name in the API (default: the package folder's name)")
    parser.add_argument("--prompt-cache", default=None, metavar="DIR",
                        help="keep the KV caches of system prompts in DIR, across restarts")
    parser.add_argument("--provider", nargs="+", default=None, metavar="EP",
                        help="execution providers to try in order (default: those the package was built for)")
    add_kv_cache_argument(parser)
    add_mmap_argument(parser)


def main(args) -> int:
    try:
        import uvicorn
        import starlette  # noqa: F401
    except ImportError:
        raise NotBuiltError("the server needs its extra: pip install 'edgellama[server]'") from None
    from ..model import load
    from ..server import ServerSettings, create_app
    from ..server.settings import is_loopback
    from .run import threads_from

    model_id = args.model_id or Path(args.model).resolve().name
    settings = ServerSettings(model_id=model_id, host=args.host, port=args.port, parallel=args.parallel,
                              queue=args.queue, max_body=args.max_body, api_key=args.api_key,
                              prompt_cache=args.prompt_cache)
    if not is_loopback(args.host) and args.api_key is None:
        print(f"edgellama serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              "this address can use the model", file=sys.stderr)
    providers = tuple(args.provider) if args.provider else None
    model = load(args.model, providers=providers, threads=threads_from(args), max_length=args.max_length,
                 kv_cache=args.kv_cache, mmap=args.mmap)
    app = create_app(model, settings)
    logging.getLogger("edgellama.server").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("edgellama.server").addHandler(handler)
    logging.getLogger("edgellama.server").propagate = False
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"edgellama serve: {model_id} at http://{host}:{args.port}/v1 ({model.provider}, "
          f"{settings.parallel} parallel, context {model.max_length}, {model.kv_cache} KV cache)", file=sys.stderr,
          flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                    timeout_graceful_shutdown=5)
    except OSError as exc:
        raise InvalidParameterError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
