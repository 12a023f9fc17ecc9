"""What the test modules share; no test module imports another test module.

tests/ is on sys.path under pytest (tests/conftest.py sits there, without an __init__.py), so a test
imports these as `from helpers.<module> import ...`. Fixtures shared by many files live in
tests/conftest.py instead.

    tiny_llama   random tiny Llama checkpoints (transformers + a trained BPE tokenizer) and their
                 conversion into packages: make_tiny_llama, convert_tiny, train_tokenizer, SENTENCES
    tiny_gguf    tiny Llama GGUF files written as llama.cpp writes them: TINY, tiny_hf_weights,
                 write_tiny_gguf, write_mixed_gguf, raw_blocks (needs the gguf package)
    graph_runs   graphs and packages run directly in ONNX Runtime: linear_model, stepwise_logits
    blocks       random Q4_1 block fields for the block-product tests: random_blocks
    backends     the two implementations of the native routines as a pytest parameter: BACKENDS,
                 needs_native
    faults       faults injected into the generation loop: on_nth_feed, interrupt
"""
