"""The size / quality presets (converters/precision.py): each preset's per-weight bits and formats in
the plan, GGUF blocks untouched by them, and bad values refused."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgellama.cli.convert import QUALITY_PRESETS
from edgellama.converters import ConvertOptions
from edgellama.converters.plan import LAYER_WEIGHTS, plan_conversion
from edgellama.converters.precision import PRESETS, Precision, more_layers, precision
from edgellama.converters.sources.tensors import SourceTensors
from edgellama.errors import InvalidParameterError

from helpers.tiny_llama import make_tiny_llama


def plan_hf(folder, **options):
    from edgellama.converters.sources.hf import HFSource

    with HFSource(folder) as source:
        return plan_conversion(ConvertOptions(**options), SourceTensors(source))


@pytest.fixture(scope="module", params=["tied", "untied"])
def hf_folder(request, tmp_path_factory):
    overrides = {} if request.param == "tied" else dict(tie_word_embeddings=False)
    return make_tiny_llama(tmp_path_factory.mktemp("precision") / "ckpt", num_hidden_layers=9, **overrides)


@pytest.mark.parametrize("quality", sorted(PRESETS))
@pytest.mark.parametrize("portable", [False, True])
def test_each_preset_plans_the_bits_its_table_says(hf_folder, quality, portable):
    preset = PRESETS[quality]
    plan = plan_hf(hf_folder, quality=quality, portable=portable)
    count = len(plan.layers)
    roles = ("embedding", "lm_head") if plan.tied else ("embedding",)
    assert plan.embedding.bits == max(preset.bits(r, tied=plan.tied) for r in roles)
    assert plan.lm_head.bits == (plan.embedding.bits if plan.tied else preset.bits("lm_head"))
    for index, layer in enumerate(plan.layers):
        for kind in LAYER_WEIGHTS:
            weight = getattr(layer.weights, kind)
            assert weight.bits == preset.bits(kind, index, count), (quality, index, kind)
            if weight.bits == 8:
                assert (weight.format, weight.block_size) == ("quantized", 32)
                assert weight.operator == ("MatMulNBits" if portable else "MatMulQ8")
            elif not portable:
                assert weight.format == "Q4_1 GPTQ"             # calibrated on the bundled text by default
                assert weight.operator == "MatMulQ4_1"
    for weight in (plan.embedding, plan.lm_head):   # a native 4-bit table in Q4_1 blocks, by the scale search
        assert weight.block_size == 32
        assert weight.format == ("Q4_1 quantized" if weight.bits == 4 and not portable else "quantized")


def test_presets_differ_in_size_and_the_cli_offers_each():
    """Each larger preset keeps at least the bits of the smaller for every weight, and more for some;
    the CLI's choices are the table's."""
    assert QUALITY_PRESETS == tuple(PRESETS)
    bits = [[PRESETS[name].bits(role, i, 30) for role in LAYER_WEIGHTS for i in range(30)]
            + [PRESETS[name].bits(role, tied=tied) for role in ("embedding", "lm_head") for tied in (False, True)]
            for name in QUALITY_PRESETS]
    assert all(all(x <= y for x, y in zip(a, b)) and a != b for a, b in zip(bits, bits[1:]))


def test_the_default_keeps_a_tied_table_at_8_bits_and_an_untied_lm_head_at_4():
    """A tied table is the LM head too (llama.cpp gives it the output's type); one 8-bit table holds
    as many bytes as an untied model's two 4-bit ones."""
    default = PRESETS["default"]
    assert default.bits("lm_head", tied=True) == 8 and default.bits("lm_head") == 4
    assert default.bits("embedding", tied=True) == default.bits("embedding") == 4
    assert Precision(("lm_head",)).bits("lm_head") == 8


def test_a_layer_matrix_on_the_4_bit_grid_stays_at_4_bits(tmp_path):
    """A checkpoint dequantized from Q4_1 blocks: its blocks rounded to nearest hold every layer matrix
    exactly, so the preset's 8 bits would store nothing more; a weight off the grid keeps them."""
    import shutil

    from safetensors import numpy as safetensors_numpy

    from edgellama.converters.q4_1 import quantize_q4_1
    from helpers.blocks import dequantized

    folder = shutil.copytree(make_tiny_llama(tmp_path / "ckpt", num_hidden_layers=3), tmp_path / "on-grid")
    tensors = safetensors_numpy.load_file(str(folder / "model.safetensors"))
    for name, value in tensors.items():
        if ".layers." in name and value.ndim == 2 and name != "model.layers.1.self_attn.k_proj.weight":
            blocks, _ = quantize_q4_1(value.astype(np.float32), search=False)
            tensors[name] = dequantized(blocks.qs, blocks.d, blocks.m).astype(value.dtype)
    safetensors_numpy.save_file(tensors, str(folder / "model.safetensors"))
    plan = plan_hf(folder, calibration=None)
    assert [layer.weights.qkv_proj.bits for layer in plan.layers] == [4, 8, 4]      # layer 1's k is off the grid
    assert {layer.weights.down_proj.bits for layer in plan.layers} == {4}
    assert plan.lm_head.bits == (8 if plan.tied else 4)
    assert plan_hf(folder, calibration=None, portable=True).layers[0].weights.qkv_proj.bits == 8   # no Q4_1 blocks


def test_an_int8_or_float_package_ignores_the_preset(hf_folder):
    from edgellama.package import Quantization

    for method in ("int8", "fp16"):
        plans = {q: plan_hf(hf_folder, quantization=Quantization(method), quality=q) for q in PRESETS}
        assert len({p.to_dict().__repr__() for p in plans.values()}) == 1, method


def test_carried_gguf_blocks_are_the_same_under_every_preset(tmp_path):
    pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as Q

    from edgellama.converters.sources.gguf import GGUFSource
    from helpers.tiny_gguf import tiny_hf_weights, write_mixed_gguf

    path = write_mixed_gguf(tmp_path / "tiny.gguf", tiny_hf_weights(seed=3), Q.Q4_1, Q.Q8_0)
    plans = []
    for quality in PRESETS:
        with GGUFSource(path) as source:
            plans.append(plan_conversion(ConvertOptions(quality=quality), SourceTensors(source)).to_dict())
    assert all(p == plans[0] for p in plans)
    assert plans[0]["layers"][0]["weights"]["qkv_proj"]["format"] == "Q4_1 blocks"


def test_more_layers_is_llama_cpps_choice():
    """llama.cpp's use_more_bits for 30 layers: the first and last three, and 5, 8, ..., 26."""
    chosen = [i for i in range(30) if more_layers(i, 30)]
    assert chosen == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


@pytest.mark.parametrize("bad", ["fast", "", None, 4.5])
def test_a_bad_preset_is_refused_naming_the_value_and_the_choices(bad):
    with pytest.raises(InvalidParameterError) as info:
        ConvertOptions(quality=bad)
    message = str(info.value)
    assert repr(bad) in message and all(name in message for name in PRESETS) and "\n" not in message


def test_a_bad_precision_entry_is_refused():
    with pytest.raises(InvalidParameterError, match="lm_head:more"):
        Precision(("lm_head:more",))
    with pytest.raises(InvalidParameterError, match="attn_v"):
        Precision(("attn_v",))
    assert precision(Precision(("down_proj:more",))).bits("down_proj", 0, 30) == 8
    with pytest.raises(InvalidParameterError, match="rounding='fast'.*nearest, search, gptq"):
        Precision(rounding="fast")


@pytest.mark.parametrize("rounding,calibrated,expected", [(None, False, "Q4_1 rounded"), (None, True, "Q4_1 GPTQ"),
                                                          ("search", False, "Q4_1 quantized"),
                                                          ("search", True, "Q4_1 quantized"),
                                                          ("nearest", True, "Q4_1 rounded")])
def test_the_rounding_picks_the_4_bit_format_and_calibration_picks_gptq(hf_folder, rounding, calibrated, expected):
    plan = plan_hf(hf_folder, quality=Precision(("qkv_proj",), rounding=rounding),
                   calibration="bundled" if calibrated else None)
    assert {layer.weights.down_proj.format for layer in plan.layers} == {expected}
    assert plan.layers[0].weights.qkv_proj.format == "quantized"
    statistic = {"Q4_1 rounded": (), "Q4_1 GPTQ": ("hessian",), "Q4_1 quantized": ("importance",)}[expected]
    assert plan.statistics == statistic


def test_the_cli_refuses_a_bad_preset_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "edgellama", "convert", "-o", str(tmp_path / "out"), "--quality",
                          "fast"], capture_output=True, text=True)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert "'fast'" in last and all(name in last for name in PRESETS)
