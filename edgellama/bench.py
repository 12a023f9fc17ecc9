"""Speed of a model package, measured the way llama-bench measures llama.cpp.

    from edgellama.bench import BenchSettings, run_bench
    report = run_bench("smollm2-int4", BenchSettings(threads=(1, 2, 4)))
    for row in report.rows:
        print(row.test, row.threads, row.mean, row.stdev)

Tests (per thread count; tokenization and sampling excluded, ids are synthetic):
  ppN         prompt processing: N random token ids in one run on an empty cache (tokens/s)
  tgN         text generation: N single-token runs from an empty cache, each ending in its greedy
              next id (on a device, found there as greedy generation does) (tokens/s)
  tgN@dD      the same after D tokens are in the cache (filled untimed); skipped, with a note,
              when D + N does not fit the KV capacity
Each test runs once to warm up, then `repetitions` times: mean +/- sample stdev.
Once, on the first thread count: load time, TTFT of a real prompt and end-to-end tokens/s through
`Model.generate` with the default sampler; with a constraint, the same end-to-end test under it
(e2eN+mask, t/s) and its cost per step against the unconstrained run (mask cost, ms: decode time between model
runs). Peak RSS, size on disk, execution provider, ONNX Runtime version and CPU features go in the header.
"""
from __future__ import annotations

import gc
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from . import kernels
from .errors import InvalidParameterError
from .kv_types import kv_type
from .memory import peak_rss_bytes
from .package import read_info

log = logging.getLogger(__name__)

REAL_PROMPT = ("Explain in a few sentences why the sky looks blue during the day and red at sunset, "
               "as you would to a curious ten-year-old.")
# /proc/cpuinfo flags (x86) and Features (ARM) worth knowing for ONNX Runtime's int4/int8 kernels
CPU_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
             "amx_int8": "AMX-INT8", "asimddp": "NEON-dotprod", "i8mm": "NEON-i8mm", "sve": "SVE"}


@dataclass(frozen=True)
class BenchSettings:
    """n_prompt / n_gen: tokens of the pp and tg tests (0 skips one); repetitions: timed runs per
    test; threads: thread counts to sweep (None = physical cores); depths: cache depths for extra
    tg tests; max_length: KV capacity (default: the smallest that fits every test, at most the
    package's); e2e_tokens: tokens of the TTFT / end-to-end test (0 skips it); kv_cache: the KV cache
    type (default the package's; see edgellama.load); mmap: leave the weights mapped from their file
    (edgellama.load)."""
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 5
    threads: tuple = (None,)
    depths: tuple = (512, 2048)
    max_length: Optional[int] = None
    providers: Optional[tuple] = None     # None: those the package was built for
    e2e_tokens: int = 128
    seed: int = 0
    constraint: Optional[object] = None   # an edgellama.Constraint for the constrained end-to-end test
    kv_cache: Optional[str] = None
    mmap: bool = False

    def __post_init__(self):
        for name in ("n_prompt", "n_gen", "e2e_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidParameterError(f"{name}={value!r} must be an integer >= 0")
        if not isinstance(self.repetitions, int) or self.repetitions < 1:
            raise InvalidParameterError(f"repetitions={self.repetitions!r} must be a positive integer")
        object.__setattr__(self, "threads", tuple(self.threads) or (None,))
        object.__setattr__(self, "depths", tuple(self.depths))
        if self.providers is not None:
            object.__setattr__(self, "providers", tuple(self.providers))
        if any(t is not None and (not isinstance(t, int) or t < 1) for t in self.threads):
            raise InvalidParameterError(f"threads={self.threads!r} must be positive integers")
        if any(not isinstance(d, int) or d < 0 for d in self.depths):
            raise InvalidParameterError(f"depths={self.depths!r} must be integers >= 0")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise InvalidParameterError(f"max_length={self.max_length!r} must be a positive integer")
        if self.kv_cache is not None:
            kv_type(self.kv_cache)
        if self.n_prompt == 0 and self.n_gen == 0 and self.e2e_tokens == 0:
            raise InvalidParameterError("n_prompt=0, n_gen=0 and e2e_tokens=0 leave no test to run; give one of them "
                                        "a positive count")
        if self.constraint is not None and self.e2e_tokens == 0:
            raise InvalidParameterError("a constraint is measured in the end-to-end test, which e2e_tokens=0 "
                                        "skips; give e2e_tokens=1 or more")

    def needed_length(self) -> int:
        """KV capacity that every requested test fits in."""
        return max([self.n_prompt, self.n_gen, 256 + self.e2e_tokens] + [d + self.n_gen for d in self.depths])


@dataclass(frozen=True)
class BenchRow:
    test: str            # "pp512", "tg128", "tg128@d512", "ttft", "e2e"
    threads: int
    unit: str            # "t/s" or "ms"
    mean: float
    stdev: float
    samples: tuple


@dataclass
class BenchReport:
    model: str
    quantization: str
    provider: str = ""
    onnxruntime: str = ""
    cpu: str = ""
    cpu_features: tuple = ()
    kernels: str = ""            # edgellama.kernels.describe(): the C routines' path
    max_length: int = 0
    kv_cache: str = ""           # the KV cache type the tests ran
    weights: str = ""            # where the weights were read from: edgellama.resident.Weights.describe, "mapped"
    size_bytes: int = 0
    load_s: float = 0.0
    peak_rss_bytes: int = 0      # edgellama.memory.peak_rss_bytes() after the last test
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_description(cpuinfo: str = "") -> tuple[str, tuple]:
    """(CPU model name, the CPU_FLAGS present) from /proc/cpuinfo text (read when not given)."""
    if not cpuinfo:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return platform.processor() or platform.machine(), ()
    name, flags = platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and name == platform.machine():
            name = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return name, tuple(label for flag, label in CPU_FLAGS.items() if flag in flags)


def package_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def _repeat(fn, repetitions: int) -> list:
    """One untimed warm-up call, then `repetitions` timed calls of fn() -> seconds."""
    fn()
    return [fn() for _ in range(repetitions)]


def _row(test: str, threads: int, tokens: int, seconds: list) -> BenchRow:
    rates = [tokens / s for s in seconds]
    stdev = statistics.stdev(rates) if len(rates) > 1 else 0.0
    return BenchRow(test, threads, "t/s", statistics.fmean(rates), stdev, tuple(rates))


def _time_prompt(ctx, ids: np.ndarray) -> float:
    ctx.reset()
    t0 = time.perf_counter()
    ctx.append(ids)
    return time.perf_counter() - t0


def _time_decode(ctx, ids: np.ndarray, fill: np.ndarray) -> float:
    """Fill the cache with `fill` (untimed), then run `ids` one token per run, each step ending in its
    greedy next id as a generation loop takes it (found on the device when the cache lives there)."""
    ctx.reset()
    if len(fill):
        ctx.append(fill)
    t0 = time.perf_counter()
    for i in range(len(ids)):
        ctx.advance(ids[i:i + 1])
        ctx.argmax()
    return time.perf_counter() - t0


def speed_tests(model, settings: BenchSettings, threads: int, notes: list) -> list:
    """pp, tg and tg-at-depth rows for one loaded model."""
    rng = np.random.default_rng(settings.seed)
    vocab = model.config.vocab_size
    ctx = model.new_context()
    rows = []
    if settings.n_prompt:
        ids = rng.integers(0, vocab, settings.n_prompt).astype(np.int32)
        rows.append(_row(f"pp{settings.n_prompt}", threads, settings.n_prompt,
                         _repeat(lambda: _time_prompt(ctx, ids), settings.repetitions)))
    if settings.n_gen:
        ids = rng.integers(0, vocab, settings.n_gen).astype(np.int32)
        for depth in dict.fromkeys((0,) + settings.depths):   # each depth once (-d 0,512 names depth 0 again)
            name = f"tg{settings.n_gen}" + (f"@d{depth}" if depth else "")
            if depth + settings.n_gen > model.max_length:
                note = f"{name} skipped: {depth} + {settings.n_gen} > max_length {model.max_length}"
                if note not in notes:
                    notes.append(note)
                continue
            fill = rng.integers(0, vocab, depth).astype(np.int32)
            rows.append(_row(name, threads, settings.n_gen,
                             _repeat(lambda: _time_decode(ctx, ids, fill), settings.repetitions)))
    return rows


def request_tests(model, settings: BenchSettings, threads: int, notes: list) -> list:
    """TTFT of a real prompt and end-to-end tokens/s with the default sampler (EOS banned); with a
    constraint, its end-to-end row and its cost per token too: the difference of the decode time between
    model runs (masking, drawing, accepting a token) per step (not of end-to-end rates: a constrained answer
    may end well before N tokens, and its rate then spreads the prefill over a few), with a note where it
    ended early."""
    plain = _Requests(model, settings, None)
    rows = plain.rows(threads)
    if settings.constraint is not None:
        constrained = _Requests(model, settings, settings.constraint)
        rows.append(replace(constrained.rows(threads)[1], test=f"e2e{settings.e2e_tokens}+mask"))
        cost = [c - p for c, p in zip(constrained.per_token_ms, plain.per_token_ms) if None not in (c, p)]
        if cost:
            sd = statistics.stdev(cost) if len(cost) > 1 else 0.0
            rows.append(BenchRow("mask cost", threads, "ms", statistics.fmean(cost), sd, tuple(cost)))
        else:
            notes.append("mask cost not measured: the constrained answer ran no decode step (its one draw is in "
                         "its ttft)")
        shortest = min(constrained.generated)
        if shortest < settings.e2e_tokens:
            notes.append(f"e2e{settings.e2e_tokens}+mask: the constrained answer ended after {shortest} tokens "
                         "(its grammar was complete)")
    return rows


class _Requests:
    """`repetitions` timed requests (after one warm-up) of REAL_PROMPT through Model.start, each on a cold
    context: TTFT, end-to-end tokens/s, decode ms between model runs per step, tokens generated."""

    def __init__(self, model, settings: BenchSettings, constraint):
        from .generation import GenerationOptions
        from .sampling import SamplingParams

        eos = model.info.special_tokens.eos_token_ids
        sampling = SamplingParams(seed=settings.seed, logit_bias={t: -1e9 for t in eos})
        options = GenerationOptions(max_new_tokens=settings.e2e_tokens, constraint=constraint)
        self.e2e_tokens = settings.e2e_tokens
        self.ttft_ms, self.e2e, self.per_token_ms, self.generated = [], [], [], []

        def once() -> float:
            ctx = model.new_context()    # cold: no cached prefix
            t0 = time.perf_counter()
            result = model.start(REAL_PROMPT, options, sampling, ctx=ctx).consume()
            seconds = time.perf_counter() - t0
            t = result.timings
            self.ttft_ms.append(t.ttft_s * 1000)
            self.e2e.append(t.generated_tokens / seconds)
            # decode_s holds decode_steps runs and as many draws (None: no step, its one draw is in the ttft)
            self.per_token_ms.append(1000 * (t.decode_s - t.decode_run_s) / t.decode_steps if t.decode_steps
                                     else None)
            self.generated.append(t.generated_tokens)
            return seconds

        _repeat(once, settings.repetitions)
        for samples in (self.ttft_ms, self.e2e, self.per_token_ms, self.generated):
            del samples[0]               # the warm-up

    def rows(self, threads: int) -> list:
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        return [BenchRow("ttft", threads, "ms", statistics.fmean(self.ttft_ms), sd(self.ttft_ms),
                         tuple(self.ttft_ms)),
                BenchRow(f"e2e{self.e2e_tokens}", threads, "t/s", statistics.fmean(self.e2e), sd(self.e2e),
                         tuple(self.e2e))]


def _capacity(info, settings: BenchSettings) -> int:
    """The KV capacity of the run; refused before anything loads when the pp test's prompt does not fit
    (the tg tests that do not fit are skipped with a note instead)."""
    if settings.max_length is not None:
        if settings.max_length > info.max_length:
            raise InvalidParameterError(f"max_length={settings.max_length} exceeds the package's {info.max_length}")
        if settings.n_prompt > settings.max_length:
            raise InvalidParameterError(f"n_prompt={settings.n_prompt} exceeds the KV capacity max_length="
                                        f"{settings.max_length}; the package holds up to {info.max_length} tokens")
        return settings.max_length
    if settings.n_prompt > info.max_length:
        raise InvalidParameterError(f"n_prompt={settings.n_prompt} exceeds the package's context of "
                                    f"{info.max_length} tokens (its max_length); a prompt test of at most "
                                    f"{info.max_length} tokens fits")
    return min(info.max_length, settings.needed_length())


def run_bench(path, settings: BenchSettings = BenchSettings()) -> BenchReport:
    """Load the package once per thread count and run every test; see the module docstring."""
    import onnxruntime

    from .model import load

    path = Path(path)
    info = read_info(path)
    cpu, features = cpu_description()
    report = BenchReport(model=str(path), quantization=info.quantization.method, onnxruntime=onnxruntime.__version__,
                         cpu=cpu, cpu_features=features, kernels=kernels.describe_for(info),
                         max_length=_capacity(info, settings),
                         size_bytes=package_bytes(path))
    for i, threads in enumerate(settings.threads):
        model = load(path, providers=settings.providers, threads=threads, max_length=report.max_length,
                     kv_cache=settings.kv_cache, mmap=settings.mmap)
        threads = model.threads
        if i == 0:
            report.load_s, report.provider, report.kv_cache = model.load_s, model.provider, model.kv_cache
            weights = model.package.weights
            report.weights = weights.describe() if weights is not None else "mapped from the file"
        log.info("benchmarking %s on %s with %d threads", path, model.provider, threads)
        report.rows.extend(speed_tests(model, settings, threads, report.notes))
        if i == 0 and settings.e2e_tokens:
            needed = len(model.encode_prompt(REAL_PROMPT)) + settings.e2e_tokens
            if needed > model.max_length:     # skipped as a depth that does not fit is, with a note
                report.notes.append(f"ttft and e2e{settings.e2e_tokens} skipped: their prompt and answer take "
                                    f"{needed} tokens > max_length {model.max_length}")
            else:
                report.rows.extend(request_tests(model, settings, threads, report.notes))
        del model
        gc.collect()
    report.peak_rss_bytes = peak_rss_bytes()
    return report
