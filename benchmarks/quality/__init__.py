"""Quality of 4-bit weights made from full precision, beside llama.cpp's and onnxruntime-genai's
quantizers on the same weights: `python -m benchmarks.quality` (see __main__.py).

    checkpoint.py   the benchmark checkpoint: norms folded, residual stream rotated (same function, no grid)
    rows.py         the table's rows as data: how each is made, sized and scored
"""
