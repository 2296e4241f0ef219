import numpy as np
import pytest

import clapkit
from clapkit.zeroshot import class_embeddings


def test_class_embedding_is_the_normalised_template_mean(tiny_model):
    templates = ["a {}", "the sound of {}"]
    emb = class_embeddings(tiny_model, ["dog", "rain"], templates)
    raw = tiny_model.embed_text(["a dog", "the sound of dog"]).mean(0)
    assert np.allclose(emb[0], raw / np.linalg.norm(raw), atol=1e-6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_zero_shot_scores_are_consistent(tiny_model):
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(16000) * 0.1).astype(np.float32) for _ in range(3)]
    labels = ["dog", "rain", "siren"]
    result = clapkit.zero_shot(tiny_model, clips, labels)
    assert result.probs.shape == (3, 3)
    assert np.allclose(result.probs.sum(1), 1.0, atol=1e-5)
    assert result.predictions == [labels[i] for i in result.similarity.argmax(1)]
    # Precomputed audio embeddings give the same answer.
    again = clapkit.zero_shot(tiny_model, tiny_model.embed_audio(clips), labels)
    assert np.allclose(again.probs, result.probs, atol=1e-6)
    assert [t[0][0] for t in result.topk(2)] == result.predictions


def test_zero_shot_rejects_bad_templates(tiny_model):
    with pytest.raises(ValueError, match="placeholder"):
        clapkit.zero_shot(tiny_model, [np.zeros(16000, np.float32) + 0.1], ["dog", "cat"], templates=["no slot"])
    with pytest.raises(ValueError, match="no labels"):
        clapkit.zero_shot(tiny_model, [np.zeros(16000, np.float32) + 0.1], [])
