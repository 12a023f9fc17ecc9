"""Hugging Face checkpoint -> package: the ONNX graph driven through its shared KV cache matches
transformers' LlamaForCausalLM step by step, for every architecture variant the converter accepts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgellama.converters import ConvertOptions, convert
from edgellama.kv_types import kv_type
from edgellama.package import Quantization, read_info, verify

from helpers.plans import planned_weight
from helpers.tiny_llama import make_tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")

FP32_TOLERANCE = 1e-4


class OrtStepper:
    def __init__(self, package, capacity: int = 64, batch: int = 1):
        import onnxruntime as ort
        from edgellama.package import read_info
        self.info = read_info(package)
        cfg = self.info.config
        from edgellama import ops
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ops.register(options)            # native packages compute with edgellama's operators
        self.session = ort.InferenceSession(str(package / "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.layers = cfg.num_layers
        kv = kv_type(self.info.graph_kv_cache)     # the caches model.onnx declares
        self.buffers = [np.zeros((batch, cfg.num_kv_heads, capacity, kv.row_length(cfg.head_dim)), kv.dtype)
                        for _ in range(2 * cfg.num_layers)]
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.buffers]
        self.total = 0
        self.batch = batch

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed `ids` [batch, n]; returns last-position logits [batch, vocab]."""
        self.total += ids.shape[1]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((self.batch, self.total), np.int64))
        binding.bind_output("logits")
        for i in range(self.layers):
            for j, kind in enumerate(("key", "value")):
                value = self.values[2 * i + j]
                binding.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                binding.bind_ortvalue_output(f"present.{i}.{kind}", value)
        self.session.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        written = self.buffers[0][:, :, self.total - ids.shape[1]:self.total]
        assert np.abs(written).sum() > 0, "present.0.key was not written into the shared past buffer"
        assert logits.shape == (self.batch, 1, self.info.config.vocab_size)
        return logits[:, 0].astype(np.float32)


def compare_with_reference(package, model, prompt_len: int = 7, decode_steps: int = 20, seed: int = 0,
                           capacity: int = 64) -> list[float]:
    """Max |logits difference| at the prompt and at each greedy decode step (reference tokens)."""
    import torch
    stepper = OrtStepper(package, capacity)
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, stepper.info.config.vocab_size, (1, prompt_len))
    diffs, past = [], None
    with torch.no_grad():
        for _ in range(decode_steps + 1):
            out = model(torch.tensor(ids), past_key_values=past, use_cache=True)
            past = out.past_key_values
            ref = out.logits[:, -1].float().numpy()
            got = stepper.step(ids)
            diffs.append(float(np.abs(got - ref).max()))
            ids = ref.argmax(-1).reshape(1, 1)
    return diffs


def load_reference(folder):
    return transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


VARIANTS = {
    "gqa_tied": {},
    "mha_untied": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "llama3_rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                        rope_theta=500000.0),
    "linear_rope": dict(rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "head_dim_64": dict(num_attention_heads=2, num_key_value_heads=1),
    "head_dim_128": dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1),
    "explicit_head_dim": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    "odd_vocab": dict(vocab_size=397, tie_word_embeddings=False),
    "bf16_weights": dict(dtype="bfloat16"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fp32_matches_transformers(tmp_path, variant):
    folder = make_tiny_llama(tmp_path / "ckpt", seed=len(variant), **VARIANTS[variant])
    out = tmp_path / "pkg"
    report = convert(folder, out, ConvertOptions(quantization=Quantization("fp32"), kv_cache="float32"))
    info = read_info(out)
    verify(out, info)
    assert report.info == info
    model = load_reference(folder)
    assert info.config.head_dim == model.config.head_dim
    rope = VARIANTS[variant].get("rope_scaling")
    assert (info.config.rope_scaling.type if info.config.rope_scaling else None) == (rope or {}).get("rope_type")
    diffs = compare_with_reference(out, model)
    assert max(diffs) < FP32_TOLERANCE, diffs


@pytest.mark.parametrize("same", [True, False])
def test_a_tied_config_with_a_stored_head_converts_as_transformers_loads_it(tmp_path, same, caplog):
    """config.json ties the head, yet the checkpoint stores lm_head.weight: of the embeddings' values it stays
    tied; of other values transformers unties it (and warns), and so does the package."""
    from safetensors.numpy import load_file, save_file

    folder = make_tiny_llama(tmp_path / "ckpt", seed=4)
    tensors = load_file(folder / "model.safetensors")
    table = tensors["model.embed_tokens.weight"]
    other = np.random.default_rng(1).standard_normal(table.shape).astype(np.float32) * 0.1
    tensors["lm_head.weight"] = table.copy() if same else other
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "pkg"
    convert(folder, out, ConvertOptions(quantization=Quantization("fp32"), kv_cache="float32"))
    assert read_info(out).config.tie_word_embeddings == same
    assert ("lm_head.weight differs" in caplog.text) == (not same)
    diffs = compare_with_reference(out, load_reference(folder))
    assert max(diffs) < FP32_TOLERANCE, diffs


def test_package_contents(tmp_path):
    """A portable fp32 package (its genai_config.json, GroupQueryAttention); the native one attends
    with RotaryAttentionF16 over its default float16 cache and has no genai_config.json
    (onnxruntime-genai cannot run it)."""
    folder = make_tiny_llama(tmp_path / "ckpt")
    native = tmp_path / "native"
    convert(folder, native, ConvertOptions(quantization=Quantization("fp32"), max_length=100))
    assert not (native / "genai_config.json").exists()
    import onnx
    nodes = onnx.load(str(native / "model.onnx"), load_external_data=False).graph.node
    assert {n.op_type for n in nodes if "Attention" in n.op_type} == {"RotaryAttentionF16"}
    assert read_info(native).kv_cache == read_info(native).graph_kv_cache == "float16"
    out = tmp_path / "pkg"
    convert(folder, out, ConvertOptions(quantization=Quantization("fp32"), max_length=100, portable=True))
    info = read_info(out)
    assert info.max_length == 100 and info.last_token_logits and info.io_dtype == "float32"
    assert info.special_tokens.eos_token_ids == (2,) and info.special_tokens.bos_token_id == 0
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == 100
    assert genai["search"]["past_present_share_buffer"] is True
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    names = [n.name for n in graph.node]
    assert len(names) == len(set(names))
    assert "/model/layers.1/attn/qkv_proj/MatMul" in names
    assert "/model/layers.0/attn/GroupQueryAttention" in names
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer if t.ByteSize() > 4096)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def dequantized_reference(folder, quant: Quantization, plan):
    """transformers' model with every weight the package quantizes replaced by its dequantized value,
    at the bits the conversion plan gave it."""
    from edgellama.converters.quantize import dequantize, quantize
    model = load_reference(folder)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                w = param.numpy()
                bits = planned_weight(plan, name).bits
                param.copy_(torch.from_numpy(dequantize(quantize(w, bits, quant.block_size, quant.symmetric))))
    return model


QUANT_CASES = {
    "int4_sym_tied": (Quantization("int4", accuracy_level=0), {}, "default"),
    "int4_asym_untied": (Quantization("int4", symmetric=False, accuracy_level=0), dict(tie_word_embeddings=False),
                         "default"),
    "int4_small_untied": (Quantization("int4", accuracy_level=0), dict(tie_word_embeddings=False), "small"),
    "int4_best_untied": (Quantization("int4", accuracy_level=0), dict(tie_word_embeddings=False), "best"),
    "int4_best_tied": (Quantization("int4", accuracy_level=0), {}, "best"),
    "int8_sym_tied": (Quantization("int8", accuracy_level=0), {}, "default"),
    "int8_asym_tied": (Quantization("int8", symmetric=False, accuracy_level=0), {}, "default"),
    "int4_padded_k": (Quantization("int4", block_size=32, accuracy_level=0),
                      dict(hidden_size=80, num_attention_heads=5, num_key_value_heads=1, head_dim=16,
                           intermediate_size=144), "default"),
    "int4_block128": (Quantization("int4", block_size=128, accuracy_level=0), dict(vocab_size=397), "default"),
}


@pytest.mark.parametrize("case", sorted(QUANT_CASES))
def test_quantized_graph_matches_dequantized_weights(tmp_path, case):
    """With float compute (accuracy_level 0) the only error left is the weights' own quantization,
    so the portable graph must match a reference running on the dequantized weights, each at the
    bits its quality preset planned (8-bit heads and layer products included): this pins the
    MatMulNBits / GatherBlockQuantized layout (nibble order, zero points, padding)."""
    from edgellama.converters.plan import ConversionPlan

    quant, overrides, quality = QUANT_CASES[case]
    folder = make_tiny_llama(tmp_path / "ckpt", seed=7, **overrides)
    out = tmp_path / "pkg"
    report = convert(folder, out, ConvertOptions(quantization=quant, portable=True, quality=quality))
    assert report.quantization_error["qkv_proj"]["worst"] > 0
    plan = ConversionPlan.from_dict(report.info.quantization.layout)
    diffs = compare_with_reference(out, dequantized_reference(folder, quant, plan))
    assert max(diffs) < 2e-4, diffs


@pytest.mark.parametrize("method, quality, overrides", [
    ("int4", "default", {}), ("int8", "default", {}),
    ("int4", "small", {}), ("int4", "small", dict(tie_word_embeddings=False)),
    ("int4", "default", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=48))],
    ids=["int4", "int8", "int4-small-tied", "int4-small-untied", "int4-heads-wider-than-hidden"])
def test_default_quantization_error_bound(tmp_path, method, quality, overrides):
    """Against the fp32 model, with the default int8-activation compute (accuracy_level 4).

    Bound on the relative RMS error of the logits (centred), from the measured weight error e:
    each logit depends on n = 4 * layers + 2 quantized weights (qkv, o, gate_up, down, embedding,
    LM head); independent relative errors add in quadrature, sqrt(n) * e, and a random network
    amplifies them at most about twice; the int8 activations add about 1/127 per matmul likewise.
    Measured on these checkpoints: about 0.44 (int4, e ~ 0.083) and 0.04 (int8, e ~ 0.005), against
    bounds of about 0.58 and 0.08; a wrong layout gives errors above 1. Quality "small" takes the
    tables to 4 bits too: Q4_1 tiles, gathered by GatherQ4_1 and multiplied by MatMulQ4_1, tied or not. A
    head_dim with num_heads * head_dim != hidden_size keeps o_proj out of the fused MLP operator (which takes
    it square)."""
    folder = make_tiny_llama(tmp_path / "ckpt", seed=8, **overrides)
    out = tmp_path / "pkg"
    report = convert(folder, out, ConvertOptions(quantization=Quantization(method), quality=quality))
    layout = report.info.quantization.layout
    assert layout["native"] and layout["layers"][0]["weights"]["gate_up_proj"]["operator"] == (
        "MatMulQ4_1" if method == "int4" else "MatMulQ8")
    if quality == "small":
        assert (layout["embedding"]["operator"], layout["lm_head"]["operator"]) == ("GatherQ4_1", "MatMulQ4_1")
    e = max(v["mean"] for v in report.quantization_error.values())
    n = 4 * report.info.config.num_layers + 2
    bound = 2 * np.sqrt(n) * (e + 1 / 127)
    model = load_reference(folder)
    stepper = OrtStepper(out)
    ids = np.random.default_rng(0).integers(3, report.info.config.vocab_size, (1, 7))
    past, worst = None, 0.0
    with torch.no_grad():
        for _ in range(21):
            o = model(torch.tensor(ids), past_key_values=past, use_cache=True)
            past, ref = o.past_key_values, o.logits[:, -1].numpy()
            got = stepper.step(ids)
            worst = max(worst, float(np.linalg.norm(got - ref) / np.linalg.norm(ref - ref.mean())))
            ids = ref.argmax(-1).reshape(1, 1)
    assert worst < bound, (worst, bound)


def _genai_greedy(og, package, text: str, max_length: int) -> tuple:
    """(prompt ids, greedy ids) of onnxruntime-genai running `package` on `text` up to max_length tokens."""
    model = og.Model(str(package))
    prompt = list(og.Tokenizer(model).encode(text))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return prompt, tokens


def test_onnxruntime_genai_generates_like_transformers(tmp_path):
    og = pytest.importorskip("onnxruntime_genai")
    folder = make_tiny_llama(tmp_path / "ckpt", seed=5)
    out = tmp_path / "pkg"
    convert(folder, out, ConvertOptions(quantization=Quantization("fp32"), max_length=32, portable=True))
    prompt, tokens = _genai_greedy(og, out, "Hello world", 24)
    reference = load_reference(folder)
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_length=24, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, len(prompt):].tolist()
    assert len(tokens) >= 8
    assert tokens == expected[:len(tokens)]


def test_a_portable_int4_package_runs_in_onnxruntime_genai_and_a_native_one_says_it_does_not(tmp_path):
    """genai runs the portable package as edgellama does (the same graph and kernels: the same greedy
    tokens); a native package, which needs edgellama's operator library, has no genai_config.json."""
    og = pytest.importorskip("onnxruntime_genai")
    import edgellama
    from edgellama.sampling import SamplingParams

    folder = make_tiny_llama(tmp_path / "ckpt", seed=5)
    portable, native = tmp_path / "portable", tmp_path / "native"
    convert(folder, portable, ConvertOptions(max_length=32, portable=True))
    convert(folder, native, ConvertOptions(max_length=32))
    assert (portable / "genai_config.json").is_file() and not (native / "genai_config.json").exists()
    prompt, tokens = _genai_greedy(og, portable, "Hello world", 20)
    ours = edgellama.load(portable, threads=1).generate(prompt, max_new_tokens=len(tokens),
                                                      sampling=SamplingParams(temperature=0.0))
    assert len(tokens) >= 8 and list(ours.token_ids)[:8] == tokens[:8]


@pytest.mark.parametrize("method, providers, tolerance", [
    ("fp16", ("cpu",), 2e-2),     # fp16 weights cast to float32 on load
    ("fp16", ("cuda",), 5e-2),    # float16 activations and KV cache throughout
])
def test_fp16_packages_run_on_cpu(tmp_path, method, providers, tolerance):
    folder = make_tiny_llama(tmp_path / "ckpt", seed=4)
    out = tmp_path / "pkg"
    convert(folder, out, ConvertOptions(quantization=Quantization(method), providers=providers))
    info = read_info(out)
    assert info.io_dtype == ("float16" if "cuda" in providers else "float32")
    diffs = compare_with_reference(out, load_reference(folder), decode_steps=8)
    assert max(diffs) < tolerance, diffs


@pytest.mark.parametrize("add_bos_token, expected", [(None, True), (False, False)])
def test_a_bos_added_by_the_tokenizer_template_is_added_to_plain_prompts(tmp_path, add_bos_token, expected):
    """Llama 3's tokenizer.json puts <|begin_of_text|> first with its post_processor and tokenizer_config.json says
    nothing: plain prompts lost the BOS that transformers' tokenizer gives them. An explicit add_bos_token wins."""
    import edgellama
    from tokenizers import Tokenizer, processors

    folder = make_tiny_llama(tmp_path / "ckpt")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
                                      special_tokens=[("<|endoftext|>", 0)])])
    tok.save(str(folder / "tokenizer.json"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("add_bos_token", None)
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "pkg"
    convert(folder, out, ConvertOptions(quantization=Quantization("fp32"), max_length=64))
    assert read_info(out).special_tokens.bos_token_id == 0
    model = edgellama.load(out, threads=1)
    ids = model.generate("The quick brown fox", max_new_tokens=1).prompt_token_ids
    assert (ids[0] == 0) == expected
    if expected:
        hf = transformers.AutoTokenizer.from_pretrained(folder)
        assert list(ids) == hf("The quick brown fox").input_ids
