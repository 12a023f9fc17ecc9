"""The side-by-side suite's model plumbing (benchmarks/suite: models.py, gguf_f32.py, the edgellama
engine's package cache, the settings and the table) on tiny checkpoints: the F32 GGUF written for
llama.cpp holds the Hugging Face weights in llama.cpp's Q/K row order and reads back through
edgellama's GGUF reader unchanged; llama.cpp (when installed) computes the same logits from it as
transformers from the folder; native and portable packages never share a cache folder."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from helpers.tiny_gguf import llama_cpp_permute  # noqa: E402
from helpers.tiny_llama import make_tiny_llama, train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:           # benchmarks/ is not installed: importable from the repository root
    sys.path.insert(0, str(ROOT))
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
TOKENIZER_SIZE = 300      # smaller than the vocabulary, as the random 1B checkpoint's tokenizer


@pytest.fixture
def suite():
    import benchmarks.suite.models as models
    return models


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("suite") / "hf", rope_scaling=LLAMA3)
    train_tokenizer(TOKENIZER_SIZE).save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def f32_gguf(hf_dir):
    from benchmarks.suite.gguf_f32 import write_f32_gguf
    return write_f32_gguf(hf_dir, hf_dir.parent / "tiny-F32.gguf")


def test_f32_gguf_holds_the_hf_weights_in_llama_cpp_order(hf_dir, f32_gguf):
    from edgellama.converters.sources.gguf import GGUFSource
    from edgellama.converters.sources.hf import HFSource

    config = json.loads((hf_dir / "config.json").read_text())
    reader = gguf.GGUFReader(str(f32_gguf))
    stored = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    assert "output.weight" not in stored            # tied: llama.cpp reuses token_embd
    with HFSource(hf_dir) as hf, GGUFSource(f32_gguf) as ours:
        q = hf.read("model.layers.1.self_attn.q_proj.weight")
        k = hf.read("model.layers.1.self_attn.k_proj.weight")
        assert np.array_equal(stored["blk.1.attn_q.weight"], llama_cpp_permute(q, config["num_attention_heads"]))
        assert np.array_equal(stored["blk.1.attn_k.weight"], llama_cpp_permute(k, config["num_key_value_heads"]))
        assert not np.array_equal(stored["blk.1.attn_q.weight"], q)
        assert np.array_equal(stored["blk.0.ffn_down.weight"], hf.read("model.layers.0.mlp.down_proj.weight"))
        assert sorted(ours.tensor_names()) == sorted(hf.tensor_names())
        for name in hf.tensor_names():
            assert np.array_equal(ours.read(name), hf.read(name)), name
        assert ours.config.rope_scaling.type == "llama3"
        assert ours.config.rope_scaling.factor == pytest.approx(LLAMA3["factor"])
        assert ours.config.rope_scaling.low_freq_factor == pytest.approx(LLAMA3["low_freq_factor"], abs=1e-3)
        assert ours.config.rope_scaling.high_freq_factor == pytest.approx(LLAMA3["high_freq_factor"], abs=1e-3)
        assert ours.config.rope_scaling.original_max_position_embeddings == 64
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                      "rope_theta", "tie_word_embeddings"):
            assert getattr(ours.config, field) == getattr(hf.config, field), field


def test_f32_gguf_vocabulary_is_padded_to_the_model(hf_dir, f32_gguf):
    from benchmarks.suite.gguf_f32 import FILLER

    reader = gguf.GGUFReader(str(f32_gguf))
    tokens = reader.fields["tokenizer.ggml.tokens"]
    types = reader.fields["tokenizer.ggml.token_type"]
    vocab = json.loads((hf_dir / "config.json").read_text())["vocab_size"]
    assert len(tokens.data) == vocab
    texts = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    assert texts[1] == "<|im_start|>" and texts[vocab - 1] == FILLER.format(vocab - 1)
    kinds = [int(types.parts[i][0]) for i in types.data]
    assert kinds[1] == gguf.TokenType.CONTROL and kinds[10] == gguf.TokenType.NORMAL
    assert kinds[TOKENIZER_SIZE:] == [gguf.TokenType.UNUSED] * (vocab - TOKENIZER_SIZE)
    assert len(reader.fields["tokenizer.ggml.merges"].data) > 0


def test_llama_cpp_computes_the_hf_logits_from_the_f32_gguf(hf_dir, f32_gguf):
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM

    ids = [5, 17, 300, 411, 2, 99, 3, 64]          # ids beyond the tokenizer's 300 as well
    llm = llama_cpp.Llama(model_path=str(f32_gguf), n_ctx=32, n_threads=1, logits_all=True, verbose=False)
    assert llm.n_vocab() == 512
    llm.eval(ids)
    ours = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = model(torch.tensor([ids])).logits[0].numpy()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, reference, atol=2e-3 * np.abs(reference).max())
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_edgellama_native_and_portable_packages_never_share_a_cache(suite, hf_dir, tmp_path, monkeypatch):
    from benchmarks.suite import engine_edgellama
    from benchmarks.suite.settings import SuiteSettings

    monkeypatch.setattr(engine_edgellama, "edgellama_source", lambda settings: hf_dir)
    monkeypatch.setattr(engine_edgellama, "MAX_LENGTH", 64)
    settings = SuiteSettings(work=tmp_path, results=tmp_path / "results", model="llama-1b-random", capacity=64,
                             prompt_tokens=8, gen_tokens=8)
    native = engine_edgellama.prepare("int4", settings)
    portable = engine_edgellama.prepare("int4-portable", settings)
    assert native != portable and native.parent == portable.parent == tmp_path / "llama-1b-random"
    assert engine_edgellama.package_is_native(native) is True
    assert engine_edgellama.package_is_native(portable) is False
    stamp = (native / "model.onnx").stat().st_mtime_ns
    assert engine_edgellama.prepare("int4", settings) == native        # cached: not converted again
    assert (native / "model.onnx").stat().st_mtime_ns == stamp
    shutil.rmtree(native)
    shutil.copytree(portable, native)                                 # a package of the other form
    assert engine_edgellama.prepare("int4", settings) == native
    assert engine_edgellama.package_is_native(native) is True
    manifest = json.loads((native / "edgellama.json").read_text())
    (native / "edgellama.json").write_text(json.dumps(dict(manifest, format_version=1)))   # an older format
    assert engine_edgellama.package_is_native(native) is None
    assert engine_edgellama.prepare("int4", settings) == native       # converted again
    assert engine_edgellama.package_is_native(native) is True


def test_model_table_sets_the_defaults_and_random_ids(suite, hf_dir, tmp_path, monkeypatch):
    from benchmarks.suite.settings import SuiteSettings

    big = SuiteSettings(work=tmp_path, results=tmp_path, model="llama-1b-random")
    assert (big.prompt_tokens, big.capacity) == (512, 1024)
    assert not suite.MODELS["llama-1b-random"].perplexity and suite.MODELS["smollm2-135m"].perplexity
    small = SuiteSettings(work=tmp_path, results=tmp_path)
    assert (small.model, small.prompt_tokens, small.capacity) == ("smollm2-135m", 128, 512)
    with pytest.raises(ValueError, match="unknown suite model"):
        SuiteSettings(work=tmp_path, results=tmp_path, model="nope")
    with pytest.raises(ValueError, match="exceed"):
        SuiteSettings(work=tmp_path, results=tmp_path, model="llama-1b-random", capacity=600)
    monkeypatch.setattr(suite, "hf_folder", lambda settings: hf_dir)
    settings = SuiteSettings(work=tmp_path, results=tmp_path, model="llama-1b-random", prompt_tokens=64,
                             ppl_tokens=16)
    ids = suite.token_ids(settings)
    assert len(ids["prompt"]) == 64 and ids == suite.token_ids(settings)
    assert 0 <= min(ids["prompt"]) and max(ids["prompt"]) < 512 and max(ids["prompt"]) >= TOKENIZER_SIZE


def test_perplexity_not_applicable_reads_n_a(suite):
    from benchmarks.suite import report

    speed = [{"runs": [{"ttft_s": 0.5, "decode_s": 1.0, "prefill_tps": 256.0, "decode_tps": 40.0}],
              "peak_rss_bytes": 2**30, "load_s": 1.0, "tokens": [1, 2]}]
    rows = [report.summarize("edgellama/int4", speed, report.NOT_APPLICABLE, 2**30, 2**29, 1e10),
            report.summarize("llamacpp/Q4_0", speed, report.NOT_APPLICABLE, 2**30, 2**29, 1e10)]
    assert rows[0]["perplexity"] is None and report.best_peer(rows, "perplexity") is None
    line = report.table(rows).splitlines()[2]
    assert line.split(" | ")[6] == "n/a" and "40.0 (1.00x)" in line
