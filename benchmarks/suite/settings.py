"""Settings of one suite run, validated once."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .models import DEFAULT_MODEL, MODELS

DATA_TEXT = Path(__file__).resolve().parents[1] / "data" / "gpl-3.0.txt"
# Optimum needs an older transformers, so its own virtual environment (README.md, "Optimum")
OPTIMUM_PYTHON_ENV = "EDGELLAMA_OPTIMUM_PYTHON"
OPTIMUM_PYTHON_DEFAULT = Path(__file__).resolve().parents[3] / "venv-optimum" / "bin" / "python"


def default_optimum_python() -> Path:
    return Path(os.environ.get(OPTIMUM_PYTHON_ENV) or OPTIMUM_PYTHON_DEFAULT)


@dataclass(frozen=True)
class SuiteSettings:
    """What every engine is asked to do; the same for all of them.

    work          folder for converted / requantized / built models (reused between runs; one
                  subfolder per model)
    results       folder for results.json and results.png
    model         a name in models.MODELS (smollm2-135m, llama-1b-random)
    engines       engine/variant keys to run ("edgellama/int4", "llamacpp/Q4_0", ...); empty = the
                  model's own list (models.py)
    processes     child processes per engine (runs alternate between engines)
    runs          timed generations per process (after one warm-up)
    threads       intra-op threads of every engine
    capacity      KV capacity (context) of the speed runs (default: the model's)
    prompt_tokens prompt length of a speed run (default: the model's); gen_tokens: greedy tokens
                  generated after it
    ppl_tokens    tokens of the evaluation text scored in one window
    optimum_python interpreter of the Optimum engine (default: $EDGELLAMA_OPTIMUM_PYTHON, else
                  venv-optimum/bin/python next to the repository)
    """
    work: Path
    results: Path
    model: str = DEFAULT_MODEL
    engines: tuple = ()
    processes: int = 3
    runs: int = 3
    threads: int = 2
    capacity: Optional[int] = None
    prompt_tokens: Optional[int] = None
    gen_tokens: int = 128
    ppl_tokens: int = 2048
    text: Path = DATA_TEXT
    optimum_python: Path = field(default_factory=default_optimum_python)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown suite model {self.model!r}; known: {', '.join(MODELS)}")
        for name in ("capacity", "prompt_tokens"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(MODELS[self.model], name))
        for name in ("processes", "runs", "threads", "capacity", "prompt_tokens", "gen_tokens", "ppl_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"suite setting {name}={value!r} must be a positive integer")
        if self.prompt_tokens + self.gen_tokens > self.capacity:
            raise ValueError(f"prompt_tokens + gen_tokens = {self.prompt_tokens + self.gen_tokens} exceed "
                             f"capacity={self.capacity}")
        if self.gen_tokens < 2:
            raise ValueError("gen_tokens must be at least 2 (decode speed is measured after the first token)")
        object.__setattr__(self, "work", Path(self.work))
        object.__setattr__(self, "results", Path(self.results))
        object.__setattr__(self, "text", Path(self.text))
        object.__setattr__(self, "optimum_python", Path(self.optimum_python))
        object.__setattr__(self, "engines", tuple(self.engines))

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in data.items()}
