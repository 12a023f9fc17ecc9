"""Importance of input channels and Hessians (converters/importance.py), measured by running the
layers in NumPy over a calibration text, a layer at a time, equal the mean second moments of each
product's input in transformers; a calibrated int4 conversion quantizes with GPTQ (or weights its
search by importance); bad calibration settings and damaged weights are clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from edgellama.converters import ConvertOptions, convert
from edgellama.converters.importance import Calibration, Statistic
from edgellama.errors import CheckpointError, InvalidParameterError
from edgellama.package import Quantization
from helpers.tiny_llama import make_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog. Edge devices run small language models. " * 3
INPUTS = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
          "self_attn.o_proj": "self_attn.o_proj", "mlp.up_proj": "mlp.gate_proj", "mlp.down_proj": "mlp.down_proj"}
KINDS = {"self_attn.q_proj": "qkv_proj", "self_attn.v_proj": "qkv_proj", "self_attn.o_proj": "o_proj",
         "mlp.up_proj": "gate_up_proj", "mlp.down_proj": "down_proj"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("importance") / "ckpt", seed=2)


def _reference(folder, windows) -> dict:
    """Every layer product's input in transformers (forward pre-hooks), each window its own sequence,
    the windows' rows concatenated."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, []).append(args[0][0].numpy().copy())))
    with torch.no_grad():
        for ids in windows:
            model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    return {name: np.concatenate(rows) for name, rows in seen.items()}


@pytest.mark.parametrize("window", [512, 23])
def test_importance_and_hessian_are_the_mean_second_moments_of_each_products_input(tiny, window):
    from edgellama.converters.sources import open_source
    from edgellama.converters.sources.tensors import SourceTensors

    ids = list(np.random.default_rng(5).integers(3, 512, 70))
    # q|k|v and down by their Hessian, the others by importance
    wanted = {(layer, kind): "hessian" if kind in ("qkv_proj", "down_proj") else "importance"
              for layer in (0, 1) for kind in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")}
    with open_source(str(tiny)) as source:
        calibration = Calibration(SourceTensors(source), ids, wanted, window=window)
        got = {s: Statistic(calibration, s) for s in ("importance", "hessian")}
        inputs = _reference(tiny, [ids[i:i + window] for i in range(0, len(ids), window)])
        for layer in (0, 1):
            for part, reads in INPUTS.items():
                x = inputs[f"model.layers.{layer}.{reads}"].astype(np.float64)
                name = f"model.layers.{layer}.{part}.weight"
                if wanted[layer, KINDS[part]] == "hessian":
                    np.testing.assert_allclose(got["hessian"][name], x.T @ x / len(x), rtol=1e-3, atol=1e-5)
                    assert got["importance"].get(name) is None
                else:
                    np.testing.assert_allclose(got["importance"][name], (x ** 2).mean(0), rtol=1e-3, atol=1e-6)
        assert len(got["importance"]) == 2 * 3 and len(got["hessian"]) == 2 * 4
        # weights that read the same input share one array; an earlier layer's statistics are dropped
        assert got["hessian"]["model.layers.1.self_attn.q_proj.weight"] is got["hessian"]["model.layers.1.self_attn.v_proj.weight"]
        with pytest.raises(RuntimeError, match="layer 0"):
            got["hessian"]["model.layers.0.self_attn.q_proj.weight"]


def test_calibrated_search_weights_the_quantizer(tiny, tmp_path):
    from edgellama.converters.precision import Precision

    # the same least-squares search without importance
    search = Precision(rounding="search")
    plain = convert(str(tiny), tmp_path / "plain", ConvertOptions(max_length=256, quality=search, calibration=None))
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    calibrated = convert(str(tiny), tmp_path / "calibrated",
                         ConvertOptions(max_length=256, calibration=str(text), quality=search))
    assert (tmp_path / "plain" / "model.onnx.data").read_bytes() != (tmp_path / "calibrated" / "model.onnx.data").read_bytes()
    # weighted by importance, the plain error can only grow (the search minimises the weighted one)
    assert calibrated.quantization_error["gate_up_proj"]["mean"] >= plain.quantization_error["gate_up_proj"]["mean"]


def test_calibration_quantizes_the_presets_4_bit_matrices_with_gptq(tiny, tmp_path):
    from edgellama.converters.plan import ConversionPlan
    from edgellama.package import read_info

    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    rounded = convert(str(tiny), tmp_path / "rounded", ConvertOptions(max_length=256, quality="small",
                                                                      calibration=None))
    gptq = convert(str(tiny), tmp_path / "gptq", ConvertOptions(max_length=256, quality="small", calibration=str(text)))
    plan = ConversionPlan.from_dict(read_info(tmp_path / "gptq").quantization.layout)
    assert plan.statistics == ("hessian",)
    assert {w.format for layer in plan.layers for w in vars(layer.weights).values()} == {"Q4_1 GPTQ"}
    # error feedback moves weights away from their own nearest grid points to lower the output error
    assert gptq.quantization_error["gate_up_proj"]["mean"] > rounded.quantization_error["gate_up_proj"]["mean"]
    assert (tmp_path / "gptq" / "model.onnx.data").stat().st_size == (tmp_path / "rounded" / "model.onnx.data").stat().st_size


def test_gptq_without_a_calibration_text_is_refused_naming_the_option():
    from edgellama.converters.precision import Precision

    with pytest.raises(InvalidParameterError, match=r"rounding='gptq' needs a calibration text.*--calibration"):
        ConvertOptions(quality=Precision(rounding="gptq"), calibration=None)
    assert ConvertOptions(quality=Precision(rounding="gptq")).calibrated


def test_a_conversion_calibrates_on_the_bundled_text_unless_told_not_to():
    from edgellama.converters.precision import Precision

    assert ConvertOptions().calibration == "bundled" and ConvertOptions().calibrated
    assert not ConvertOptions(calibration=None).calibrated
    assert Precision().rounding_with(ConvertOptions().calibrated) == "gptq"
    assert Precision().rounding_with(ConvertOptions(calibration=None).calibrated) == "nearest"


def test_missing_calibration_file_is_refused(tmp_path):
    with pytest.raises(InvalidParameterError, match="calibration=.*text file"):
        ConvertOptions(calibration=str(tmp_path / "missing.txt"))


def test_non_finite_weight_is_named_by_a_calibrated_conversion(tiny, tmp_path):
    import shutil

    broken = shutil.copytree(tiny, tmp_path / "broken")
    tensors = safetensors_numpy.load_file(str(broken / "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"].reshape(-1)[7] = np.nan
    safetensors_numpy.save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.down_proj\.weight.*NaN or infinite"):
        convert(str(broken), tmp_path / "out", ConvertOptions(quantization=Quantization("int4"), calibration="bundled"))
    assert not (tmp_path / "out").exists()
