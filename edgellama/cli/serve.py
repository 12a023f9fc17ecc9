"""`edgellama serve MODEL`: the OpenAI-compatible server (edgellama.server) on uvicorn."""
from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from pathlib import Path

from ..errors import InvalidParameterError, NotBuiltError
from . import add_kv_cache_argument, add_mmap_argument, Words

STARTUP_FAILURE = 3       # uvicorn's exit status when the app does not start (it logs why)


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
    parser.add_argument("--prompt-cache-mb", type=int, default=2048, metavar="MB",
                        help="the most its files take together; past it the least recently used go (default 2048)")
    parser.add_argument("--provider", action=Words, default=None, metavar="EP",
                        help="execution providers to try in order (default: those the package was built for)")
    add_kv_cache_argument(parser)
    add_mmap_argument(parser)


def main(args) -> int:
    try:
        import uvicorn  # noqa: F401
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
                              prompt_cache=args.prompt_cache, prompt_cache_mb=args.prompt_cache_mb)
    if not is_loopback(args.host) and args.api_key is None:
        print(f"edgellama serve: warning: listening on {args.host} without --api-key: anyone who can reach "
              "this address can use the model", file=sys.stderr)
    providers = tuple(args.provider) if args.provider else None
    model = load(args.model, providers=providers, threads=threads_from(args), max_length=args.max_length,
                 kv_cache=args.kv_cache, mmap=args.mmap)
    app = create_app(model, settings)
    sock = listening_socket(args.host, args.port)
    logging.getLogger("edgellama.server").setLevel(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("edgellama.server").addHandler(handler)
    logging.getLogger("edgellama.server").propagate = False
    port = sock.getsockname()[1]                     # the port chosen by the system for --port 0
    host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    print(f"edgellama serve: {model_id} at http://{host}:{port}/v1 ({model.provider}, "
          f"{settings.parallel} parallel, context {model.max_length}, {model.kv_cache} KV cache)", file=sys.stderr,
          flush=True)
    return run_server(app, sock)


# errno -> what to do about it, for the socket's own errors
LISTEN_ADVICE = {
    errno.EADDRINUSE: "another program listens there; stop it or choose another --port",
    errno.EADDRNOTAVAIL: "--host must be an address of this machine (127.0.0.1, or 0.0.0.0 for every interface)",
    errno.EACCES: "ports below 1024 need privileges; choose --port 1024 or above",
}


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the banner: an address in use, or not of this machine, is then
    refused in one line instead of after the banner by uvicorn's own log and exit status 3."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET     # as uvicorn's Config.bind_socket
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":   # (there it would let the bind share a port in use)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen()        # from the banner on, a client's connection waits for uvicorn instead of failing
    except OSError as exc:
        sock.close()
        shown = f"[{address}]" if family == socket.AF_INET6 else address
        if isinstance(exc, socket.gaierror):
            advice = "--host must be an address or host name of this machine"
        else:
            advice = LISTEN_ADVICE.get(exc.errno, "check --host and --port")
        raise InvalidParameterError(f"cannot listen on {shown}:{port} ({exc.strerror or exc}): {advice}") from None
    return sock


def run_server(app, sock: socket.socket) -> int:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM (uvicorn shuts down gracefully, then exit 0)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.stop()                 # running requests end at their next token: they answer, then go
            super().handle_exit(sig, frame)

    server = None
    try:
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        server = Server(config)
        server.run(sockets=[sock])
    except KeyboardInterrupt:      # the signal uvicorn raises again after its shutdown, as uvicorn.run takes it
        pass
    finally:
        sock.close()
    return 0 if server is not None and server.started else STARTUP_FAILURE
