"""Importance of input channels (converters/importance.py), measured by running the fp32 package over
a calibration text, equals the mean squared input of each product in transformers; a calibrated int4
conversion weights its quantizer by it; bad calibration settings and damaged weights are clear errors."""
from __future__ import annotations

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from edgellama.converters import ConvertOptions, convert
from edgellama.converters.importance import measure
from edgellama.errors import CheckpointError, InvalidParameterError
from edgellama.package import Quantization
from helpers.tiny_llama import convert_tiny, make_tiny_llama

TEXT = "The quick brown fox jumps over the lazy dog. Edge devices run small language models. " * 3
INPUTS = {"self_attn.q_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
          "self_attn.o_proj": "self_attn.o_proj", "mlp.up_proj": "mlp.gate_proj", "mlp.down_proj": "mlp.down_proj"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("importance") / "ckpt", seed=2)


def _reference(folder, ids) -> dict:
    """Mean x^2 per input channel of every layer product in transformers, by forward pre-hooks."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.__setitem__(name, (args[0][0] ** 2).mean(0).numpy())))
    with torch.no_grad():
        model(torch.tensor([ids]))
    for hook in hooks:
        hook.remove()
    return seen


def test_importance_is_the_mean_squared_input_of_each_product(tiny, tmp_path):
    from edgellama.evaluate import tokenize_text

    package = convert_tiny(tiny, tmp_path / "fp32")
    got = measure(package, TEXT, threads=1)
    expected = _reference(tiny, tokenize_text(package, TEXT))
    for layer in (0, 1):
        for part, reads in INPUTS.items():
            value = got[f"model.layers.{layer}.{part}.weight"]
            np.testing.assert_allclose(value, expected[f"model.layers.{layer}.{reads}"], rtol=1e-3, atol=1e-6)
    assert len(got) == 2 * 7


def test_calibrated_conversion_weights_the_quantizer(tiny, tmp_path):
    from edgellama.converters.precision import Precision

    # the same least-squares search without importance (the presets round to nearest unless calibrated)
    plain = convert(str(tiny), tmp_path / "plain", ConvertOptions(max_length=256, quality=Precision(search=True)))
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT)
    calibrated = convert(str(tiny), tmp_path / "calibrated", ConvertOptions(max_length=256, calibration=str(text)))
    assert (tmp_path / "plain" / "model.onnx.data").read_bytes() != (tmp_path / "calibrated" / "model.onnx.data").read_bytes()
    # weighted by importance, the plain error can only grow (the search minimises the weighted one)
    assert calibrated.quantization_error["gate_up_proj"]["mean"] >= plain.quantization_error["gate_up_proj"]["mean"]


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
