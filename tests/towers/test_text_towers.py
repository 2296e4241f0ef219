import torch

from clapkit.towers.clip_text import ClipTextTower


def test_clip_tower_trimmed_forward_equals_open_clip_full_context():
    torch.manual_seed(0)
    tower = ClipTextTower(width=32, heads=2, layers=2, context_length=32).eval()
    tokens = tower.tokenize(["a dog barks", "rain falls on a tin roof, then thunder rolls far away"])
    with torch.no_grad():
        out = tower(tokens["input_ids"], tokens["attention_mask"])
        pooled, full = tower.model(tokens["input_ids"])  # open_clip's own forward over all 32 positions
    length = int(tokens["attention_mask"].sum(1).max())
    assert out.sequence.shape == (2, length, 32) and out.mask.shape == (2, length)
    assert torch.allclose(out.pooled, pooled, atol=1e-6)
    assert torch.allclose(out.sequence, full[:, :length], atol=1e-6)
