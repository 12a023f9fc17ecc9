"""The benchmark checkpoint (benchmarks/quality/checkpoint.py): folded and rotated, it computes the
original's function, and its weights are no longer the original's."""
import numpy as np
import pytest

from benchmarks.quality.checkpoint import random_orthogonal, read_folder, write_rotated
from helpers.tiny_llama import make_tiny_llama


def _logits(folder, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def test_random_orthogonal_is_orthogonal_and_seeded():
    q = random_orthogonal(48, 7)
    np.testing.assert_allclose(q @ q.T, np.eye(48), atol=1e-12)
    np.testing.assert_array_equal(q, random_orthogonal(48, 7))
    assert not np.allclose(q, random_orthogonal(48, 8))


@pytest.mark.parametrize("tied", [True, False])
def test_rotated_checkpoint_computes_the_same_function(tmp_path, tied):
    src = make_tiny_llama(tmp_path / "src", tie_word_embeddings=tied, seed=3)
    out = write_rotated(src, tmp_path / "rotated")
    ids = [5, 17, 200, 31, 4, 99, 511, 250]
    expected, got = _logits(src, ids), _logits(out, ids)
    assert np.abs(got - expected).max() < 1e-4
    config, weights = read_folder(out)
    assert config["tie_word_embeddings"] is False
    _, before = read_folder(src)
    np.testing.assert_array_equal(weights["model.layers.1.input_layernorm.weight"], 1.0)
    assert np.abs(weights["model.layers.0.mlp.down_proj.weight"]
                  - before["model.layers.0.mlp.down_proj.weight"]).max() > 1e-2
