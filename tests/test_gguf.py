"""GGUFSource: config from metadata, tensors equal to transformers' reading of the same file,
clear errors on unsupported or damaged files, and the converted package's greedy output."""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from edgellama.config import ModelConfig, RopeScaling  # noqa: E402
from edgellama.converters.sources.gguf import GGUFSource, hf_tensor_name, rotary_row_order  # noqa: E402
from edgellama.errors import CheckpointError, ModelNotFoundError, UnsupportedConfigError  # noqa: E402
from edgellama.rope import inv_frequencies  # noqa: E402
from helpers.tiny_gguf import TINY, llama_cpp_permute, tiny_hf_weights, write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    source = GGUFSource(smollm2_gguf)
    yield source
    source.close()


# --- tests on tiny files -------------------------------------------------------------------------

def test_rotary_row_order_undoes_llama_cpp_permutation():
    rng = np.random.default_rng(1)
    for heads, head_dim in ((9, 64), (3, 64), (4, 16), (1, 2)):
        weights = rng.standard_normal((heads * head_dim, 5)).astype(np.float32)
        permuted = llama_cpp_permute(weights, heads)
        assert not np.array_equal(permuted, weights) or head_dim == 2
        np.testing.assert_array_equal(permuted[rotary_row_order(heads * head_dim, heads)], weights)


def test_tensor_names_map_to_hf():
    assert hf_tensor_name("blk.17.ffn_down.weight") == "model.layers.17.mlp.down_proj.weight"
    assert hf_tensor_name("blk.0.attn_norm.weight") == "model.layers.0.input_layernorm.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("blk.0.ffn_gate_exps.weight") is None


@pytest.mark.parametrize("untied", [False, True])
def test_tiny_f32_round_trip(tmp_path, untied):
    weights = tiny_hf_weights(untied=untied)
    with GGUFSource(write_tiny_gguf(tmp_path / "tiny.gguf", weights)) as source:
        cfg = source.config
        assert (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (64, 4, 2, 16)
        assert (cfg.num_layers, cfg.intermediate_size, cfg.vocab_size) == (2, 96, 40)
        assert cfg.rope_theta == 50000.0 and cfg.max_position_embeddings == 256
        assert cfg.tie_word_embeddings is not untied
        assert sorted(source.tensor_names()) == sorted(weights)
        for name, expected in weights.items():
            got = source.read(name)
            assert got.dtype == np.float32 and got.shape == expected.shape, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("qtype", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.F16,
                                   GGMLQuantizationType.BF16])
def test_tiny_quantized_read_and_raw_agree(tmp_path, qtype):
    weights = tiny_hf_weights(seed=2)
    with GGUFSource(write_tiny_gguf(tmp_path / "tiny.gguf", weights, qtype=qtype)) as source:
        for name, expected in weights.items():
            got = source.read(name)
            if expected.ndim == 2:
                # the quantization error is bounded; the row order must be HF's
                np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max(), err_msg=name)
                type_name, data, shape = source.raw(name)
                assert type_name == qtype.name and shape == expected.shape
                np.testing.assert_array_equal(dequantize(data, qtype).reshape(shape), got, err_msg=name)


def test_non_llama_architecture_is_refused(tmp_path):
    path = write_tiny_gguf(tmp_path / "other.gguf", tiny_hf_weights(), arch="qwen2")
    with pytest.raises(UnsupportedConfigError, match="general.architecture='qwen2'"):
        GGUFSource(path)


def test_unsupported_rope_scaling_is_refused(tmp_path):
    extra = {"llama.rope.scaling.type": ("string", "yarn"), "llama.rope.scaling.factor": ("float32", 4.0)}
    path = write_tiny_gguf(tmp_path / "yarn.gguf", tiny_hf_weights(), extra_kv=extra)
    with pytest.raises(UnsupportedConfigError, match="llama.rope.scaling.type='yarn'"):
        GGUFSource(path)


def test_linear_rope_scaling_is_read(tmp_path):
    extra = {"llama.rope.scaling.type": ("string", "linear"), "llama.rope.scaling.factor": ("float32", 2.0)}
    with GGUFSource(write_tiny_gguf(tmp_path / "linear.gguf", tiny_hf_weights(), extra_kv=extra)) as source:
        assert source.config.rope_scaling == RopeScaling(type="linear", factor=2.0)


@pytest.mark.parametrize("scaling", [
    RopeScaling(type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64),
    # two frequencies in the blended band: the fit recovers non-default factors
    RopeScaling(type="llama3", factor=32.0, low_freq_factor=0.5, high_freq_factor=10.0,
                original_max_position_embeddings=2048),
])
def test_llama3_rope_freqs_are_recovered(tmp_path, scaling):
    head_dim = TINY["hidden"] // TINY["heads"]
    base = ModelConfig(vocab_size=1, hidden_size=head_dim, intermediate_size=1, num_layers=1, num_heads=1,
                       num_kv_heads=1, head_dim=head_dim, rope_theta=50000.0)
    scaled = ModelConfig(**{**base.__dict__, "rope_scaling": scaling})
    divisors = (inv_frequencies(base) / inv_frequencies(scaled)).astype(np.float32)
    extra = {"llama.rope.scaling.original_context_length": ("uint32", scaling.original_max_position_embeddings)}
    path = write_tiny_gguf(tmp_path / "llama3.gguf", tiny_hf_weights(), extra_kv=extra,
                           extra_tensors={"rope_freqs.weight": divisors})
    with GGUFSource(path) as source:
        got = source.config.rope_scaling
        assert "rope_freqs.weight" not in source.tensor_names()
    assert got.type == "llama3" and got.factor == pytest.approx(scaling.factor)
    np.testing.assert_allclose(inv_frequencies(ModelConfig(**{**base.__dict__, "rope_scaling": got})),
                               inv_frequencies(scaled), rtol=1e-5)


def test_truncated_file_names_the_file(tmp_path):
    path = write_tiny_gguf(tmp_path / "full.gguf", tiny_hf_weights())
    data = path.read_bytes()
    for keep in (len(data) - 100, len(data) // 2, 200, 10):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(CheckpointError, match=f"cut{keep}.gguf"):
            GGUFSource(cut)


def test_not_a_gguf_and_missing_file(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="bogus.gguf"):
        GGUFSource(bogus)
    with pytest.raises(ModelNotFoundError, match="absent.gguf"):
        GGUFSource(tmp_path / "absent.gguf")


def test_unknown_tensor_is_refused(tmp_path):
    extra = {"blk.0.ffn_gate_exps.weight": np.zeros((2, 4), dtype=np.float32)}
    path = write_tiny_gguf(tmp_path / "moe.gguf", tiny_hf_weights(), extra_tensors=extra)
    with pytest.raises(UnsupportedConfigError, match="blk.0.ffn_gate_exps.weight"):
        GGUFSource(path)


# --- the real SmolLM2 file -----------------------------------------------------------------------

def test_smollm2_config(smollm2):
    cfg = smollm2.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.head_dim, cfg.vocab_size, cfg.intermediate_size) == (64, 49152, 1536)
    assert cfg.tie_word_embeddings and cfg.rope_theta == 100000.0 and cfg.rope_scaling is None
    assert cfg.rms_norm_eps == pytest.approx(1e-5)
    st = smollm2.special_tokens
    assert (st.bos_token_id, st.eos_token_ids, st.add_bos_token) == (1, (2,), False)
    assert smollm2.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_smollm2_raw_blocks(smollm2):
    type_name, data, shape = smollm2.raw("model.layers.3.self_attn.k_proj.weight")
    assert type_name == "Q4_1" and shape == (192, 576)
    assert data.dtype == np.uint8 and data.shape == (192, 576 // 32 * 20)
    got = dequantize(data, GGMLQuantizationType.Q4_1).reshape(shape)
    np.testing.assert_array_equal(got, smollm2.read("model.layers.3.self_attn.k_proj.weight"))


@pytest.mark.slow
def test_smollm2_tensors_equal_transformers(smollm2, smollm2_hf_model):
    reference = smollm2_hf_model.state_dict()
    names = smollm2.tensor_names()
    assert set(names) == set(reference) - {"lm_head.weight"}
    for name in names:
        expected = reference[name].detach().float().numpy()
        got = smollm2.read(name)
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_fp32_package_greedy_tokens_match_transformers(smollm2, smollm2_fp32_package, smollm2_hf_model):
    """64 greedy tokens of the converted fp32 package (argmax over the runtime's logits, one token
    per step through the KV cache) equal transformers' greedy generate on the same weights."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer

    from edgellama.model import load

    tokenizer = Tokenizer.from_str(smollm2.tokenizer_files()["tokenizer.json"].decode("utf-8"))
    prompt = tokenizer.encode("The three primary colors are red, blue and").ids
    with torch.no_grad():
        out = smollm2_hf_model.generate(torch.tensor([prompt]), max_new_tokens=64, min_new_tokens=64,
                                        do_sample=False, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    expected = out[0, len(prompt):].tolist()
    assert len(expected) == 64

    context = load(smollm2_fp32_package).new_context()
    logits = context.append(prompt)
    got = []
    for _ in range(64):
        got.append(int(np.argmax(logits)))
        logits = context.append([got[-1]])
    assert got == expected
