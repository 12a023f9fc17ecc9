"""Side-by-side suite: edgellama against llama.cpp and onnxruntime-genai on SmolLM2-135M (and, speed
only, on a random-weight model of the Llama-3.2-1B shape).

    python -m benchmarks.suite                       # everything, results in bench-results/suite/
    python -m benchmarks.suite --engines edgellama/int4 llamacpp/Q4_0 --processes 5 --runs 3
    python -m benchmarks.suite --model llama-1b-random --results bench-results/suite-1b

A benchmark script, not part of the test suite; see README.md next to this file for installing
the peers and for what each figure means.
"""
