"""`edgellama run MODEL PROMPT`: stream generated text to stdout, timings to stderr (or one JSON object)."""
from __future__ import annotations

import argparse
import json
import sys

from . import add_kv_cache_argument, add_mmap_argument, text_argument, unescaped, Words

RANDOM_SEED = -1      # --seed -1: a random seed, as in llama.cpp


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `chat`: the package, its context and the sampler."""
    parser.add_argument("model", help="model package folder (from `edgellama convert`)")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="tokens to generate at most")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=40, metavar="K", help="0 = off (default 40)")
    parser.add_argument("--top-p", type=float, default=0.95, metavar="P", help="1 = off (default 0.95)")
    parser.add_argument("--min-p", type=float, default=0.05, metavar="P", help="0 = off (default 0.05)")
    parser.add_argument("--repeat-penalty", type=float, default=1.0, metavar="R", help="1 = off (default)")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (default or -1: random)")
    parser.add_argument("--stop", action=Words, type=unescaped, default=[], metavar="S",
                        help="stop strings (cut from the text); \\n, \\t, \\r, \\\\ read as in llama.cpp")
    parser.add_argument("--max-length", type=int, default=None, metavar="N",
                        help="KV-cache capacity (default: the package's max_length)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads (default: physical cores; at most the CPUs this process may use)")
    parser.add_argument("--context-shift", action="store_true",
                        help="when the context fills, drop the oldest tokens (chat: turns) instead of stopping")
    parser.add_argument("--verify", action="store_true",
                        help="check the sha256 of every file, the weights too, before loading (loading always "
                             "checks the other files and the weights' size)")
    parser.add_argument("--provider", action=Words, default=None, metavar="EP",
                        help="execution providers to try in order (cpu, cuda, coreml, ...; default: those the "
                             "package was built for)")
    add_kv_cache_argument(parser)
    add_mmap_argument(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("prompt", help="prompt text ('-' reads it from stdin)")
    parser.add_argument("--keep", type=int, default=None, metavar="N",
                        help="with --context-shift: prompt tokens kept at the start (default: the BOS, or the first 4 "
                             "where the prompt has none)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (text, token_ids, finish_reason, timings) instead of streaming")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE", help="the output is JSON valid against this JSON schema file")
    shape.add_argument("--regex", metavar="PATTERN", help="the output matches this regular expression as a whole")
    shape.add_argument("--grammar", metavar="FILE", help="the output follows this Lark grammar file (llguidance)")
    parser.add_argument("--logprobs", type=int, default=None, metavar="N",
                        help="with --json: each token's log-probability and the N best (after the constraint)")


def read_text(path: str, what: str) -> str:
    from ..errors import InvalidParameterError

    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"cannot read the {what} file {path!r}: {exc}") from None


def constraint_from(args):
    """The Constraint of --json-schema / --regex / --grammar, or None."""
    from ..constraint import Constraint

    if getattr(args, "json_schema", None):
        return Constraint.json_schema(read_text(args.json_schema, "JSON schema"))
    if getattr(args, "regex", None) is not None:
        return Constraint.regex(text_argument(args.regex, "--regex"))
    if getattr(args, "grammar", None):
        return Constraint.grammar(read_text(args.grammar, "grammar"))
    return None


def sampling_from(args):
    from ..errors import InvalidParameterError
    from ..sampling import SamplingParams

    if args.seed is not None and not RANDOM_SEED <= args.seed < 2 ** 64:
        raise InvalidParameterError(f"--seed {args.seed} must be -1 (a random seed) or an integer in [0, 2**64)")
    seed = None if args.seed == RANDOM_SEED else args.seed      # llama.cpp's convention
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, seed=seed)


def threads_from(args):
    """--threads, capped at the CPUs this process may run on (more only make each step slower)."""
    if args.threads is None or args.threads <= 0:
        return args.threads            # the default, or a value load() refuses by name
    from ..session import usable_cpus

    cpus = usable_cpus()
    if args.threads > cpus:
        print(f"edgellama: --threads {args.threads} is more than the {cpus} CPUs this process may use; "
              f"using {cpus}", file=sys.stderr)
        return cpus
    return args.threads


def load_from(args):
    from ..model import load

    providers = tuple(args.provider) if args.provider else None
    return load(args.model, providers=providers, threads=threads_from(args), max_length=args.max_length,
                verify=args.verify, kv_cache=args.kv_cache, mmap=args.mmap)


def timings_line(timings) -> str:
    return (f"ttft {timings.ttft_s * 1000:.0f} ms, prefill {timings.prefill_tokens_per_s:.0f} tok/s, "
            f"decode {timings.decode_tokens_per_s:.0f} tok/s")


def result_json(result) -> str:
    t = result.timings
    out = {
        "text": result.text, "token_ids": list(result.token_ids), "finish_reason": result.finish_reason,
        "ttft_ms": round(t.ttft_s * 1000, 3), "prefill_tokens_per_s": round(t.prefill_tokens_per_s, 3),
        "decode_tokens_per_s": round(t.decode_tokens_per_s, 3), "prompt_tokens": t.prompt_tokens,
        "generated_tokens": t.generated_tokens,
    }
    if result.logprobs:
        out["logprobs"] = [entry.to_dict() for entry in result.logprobs]
    return json.dumps(out, ensure_ascii=False)


def check_logprobs(count) -> None:
    """--logprobs N in the command line's terms (the API's message offers None, which is leaving the flag out)."""
    from ..errors import InvalidParameterError
    from ..logprobs import MAX_LOGPROBS

    if count is not None and not 0 <= count <= MAX_LOGPROBS:
        raise InvalidParameterError(f"--logprobs {count}: give a number of alternatives from 0 to {MAX_LOGPROBS}, "
                                    "or leave the flag out")


def main(args) -> int:
    from ..errors import InvalidParameterError
    from ..generation import GenerationOptions

    sampling = sampling_from(args)   # invalid settings fail before the model loads
    constraint = constraint_from(args)
    if args.logprobs is not None and not args.json:
        raise InvalidParameterError("--logprobs is printed with --json; add --json")
    check_logprobs(args.logprobs)
    if args.keep is not None and not args.context_shift:
        raise InvalidParameterError(f"--keep {args.keep} has no effect without --context-shift (it says what a "
                                    "shift keeps); add --context-shift or leave --keep out")
    if args.prompt == "-":
        reconfigure = getattr(sys.stdin, "reconfigure", None)
        if reconfigure is not None:          # bytes that are not UTF-8 kept, for the error below
            reconfigure(errors="surrogateescape")
        prompt = text_argument(sys.stdin.read(), "the prompt on standard input")
    else:
        prompt = text_argument(args.prompt, "the prompt")
    text_argument(args.stop, "--stop")
    options = GenerationOptions(max_new_tokens=args.max_new_tokens, stop=tuple(args.stop),
                                on_overflow="shift" if args.context_shift else "error", n_keep=args.keep,
                                constraint=constraint, logprobs=args.logprobs)
    model = load_from(args)
    stream = model.start(prompt, options, sampling)
    if args.json:
        print(result_json(stream.consume()))
        return 0
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    print(timings_line(stream.result.timings), file=sys.stderr)
    return 0
