"""The demo's LALM step: QA construction (balanced option orders, answer extraction), scoring on hand-built
answers, the stored-feature path against the live encoder, and both stages + evaluation on a tiny Llama."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import soundfile as sf
import torch

from clapkit.cache import FeatureStore
from clapkit.lalm.evaluate import extract_label
from demo.config import LalmSection, LalmStageSection, load_config
from demo.lalm import LalmRunner, _scene_order, check_stored_features, stored_sequences
from demo.lalm_qa import (
    LalmData,
    OrderRow,
    TrainClip,
    TrainScene,
    class_aliases,
    eval_samples,
    label_answers,
    score_predictions,
    stage1_items,
    stage2_items,
)
from tests.conftest import TINY_OVERRIDES, TINY_RATE, tone
from tests.lalm.conftest import make_lalm, make_tokenizer

PHRASES = {
    "dog": [["a dog", "barks", "barking"], ["a puppy", "yaps", "yapping"]],
    "piano": [["a piano", "plays", "playing"], ["someone", "plays the piano", "playing the piano"]],
    "violin": [["a violin", "plays", "playing"], ["someone", "plays the violin", "playing the violin"]],
    "water": [["water", "flows", "flowing"], ["a stream", "trickles", "trickling"]],
    "splash": [["water", "splashes", "splashing"], ["someone", "splashes through water", "splashing through water"]],
}
CLASSES = sorted(PHRASES)


def _data(features: dict[str, torch.Tensor] | None = None, dim: int = 8) -> LalmData:
    clips = [TrainClip(f"c{i}", label, [f"the sound of {label} {i}"]) for i, label in enumerate(CLASSES)]
    scenes = [
        TrainScene("s0", ["a dog barks, then a piano plays"], ("dog", "piano")),
        TrainScene("s1", ["a piano plays, then a dog barks"], ("piano", "dog")),
        TrainScene("s2", ["water flows while a violin plays"], None),
    ]
    test = [TrainClip(f"t{i}", label) for i, label in enumerate(CLASSES)]
    rows = [OrderRow("o0", "o0r", "dog", "violin"), OrderRow("o1", "o1r", "water", "piano")]
    keys = [c.key for c in clips + test] + [s.key for s in scenes] + [k for r in rows for k in (r.key, r.reversed_key)]
    g = torch.Generator().manual_seed(0)
    if features is None:
        features = {k: torch.randn(3 + i % 4, dim, generator=g) for i, k in enumerate(keys)}
    return LalmData(PHRASES, CLASSES, clips, scenes, test, rows, features)


def test_order_questions_offer_both_option_orders_and_answer_the_first_event():
    items = [it for it in stage2_items(_data(), clip_repeats=2, scenes=True) if it.kind == "order"]
    assert [it.feature_key for it in items] == ["s0", "s1"]  # the overlapping scene asks no order question
    aliases = class_aliases(PHRASES)
    for item, first in zip(items, ("dog", "piano")):
        letters = Counter()
        for question, answer in item.pairs:
            options = [line[4:] for line in question.splitlines() if line.startswith("(")]
            assert question.startswith("Which sound comes first?") and len(options) == 2
            assert answer in options and extract_label(answer, aliases) == first
            letters["AB"[options.index(answer)]] += 1
        assert letters["A"] == letters["B"] > 0  # each phrasing asked with the answer as option A and as B
    labels = [it for it in stage2_items(_data(), clip_repeats=2, scenes=True) if it.kind == "label"]
    assert len(labels) == 2 * len(CLASSES)
    dog = next(it for it in labels if it.feature_key == "c0")
    assert (
        {a for _, a in dog.pairs}
        == set(label_answers("dog", PHRASES))
        == {
            "A dog barks.",
            "A dog barking.",
            "A puppy yaps.",
            "A puppy yapping.",
        }
    )
    captions = stage1_items(_data(), clip_repeats=3, scenes=False)
    assert len(captions) == 3 * len(CLASSES) and all(it.kind == "caption" for it in captions)


def test_held_out_order_questions_are_balanced():
    samples = [s for s in eval_samples(_data()) if s.meta["kind"] == "mc"]
    assert len(samples) == 4  # two rows, each asked on the scene and on its reversal
    first_row = samples[:2]
    assert first_row[0].meta["choices"] == first_row[1].meta["choices"]  # the same options for both orders
    assert [s.meta["answer"] for s in first_row] == ["a dog barking", "a violin playing"]
    right = [s.meta["choices"].index(s.meta["answer"]) for s in samples]
    assert sorted(right) == [0, 0, 1, 1]  # "A" is right exactly half of the time
    assert samples[2].meta["choices"] == ["a piano playing", "water flowing"]  # options alternate by row
    labels = [s for s in eval_samples(_data(), order_rows=1) if s.meta["kind"] == "label"]
    assert [s.meta["answer"] for s in labels] == CLASSES and labels[0].messages[0]["content"].startswith("What sound")


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("A puppy yaps.", "dog"),
        ("A dog is barking.", "dog"),  # several phrasings of one class
        ("It is a dog, barking loudly.", "dog"),
        ("Someone plays the piano.", "piano"),
        ("someone splashing through water", "splash"),  # "water" names two classes: the longer phrase decides
        ("A stream trickles.", "water"),
        ("Water.", None),  # shared by water and splash
        ("Someone is playing.", None),  # shared phrasings name no class
        ("A dog barks and a violin plays.", None),  # two classes named: unparsed
        ("I cannot tell.", None),
    ],
)
def test_label_extraction_uses_class_names_and_phrasings(answer, label):
    assert extract_label(answer, class_aliases(PHRASES)) == label


def test_scores_on_hand_built_answers():
    records = [
        {"kind": "label", "prediction": "A puppy yapping.", "answer": "dog"},
        {"kind": "label", "prediction": "Someone plays the violin.", "answer": "piano"},
        {"kind": "label", "prediction": "Hmm.", "answer": "water"},
        {"kind": "label", "prediction": "violin", "answer": "violin"},
        {"kind": "mc", "prediction": "a dog barking", "answer": "a dog barking", "choices": ["a dog barking", "x y"]},
        {"kind": "mc", "prediction": "(A)", "answer": "x y", "choices": ["a dog barking", "x y"]},
        {"kind": "mc", "prediction": "x y", "answer": "x y", "choices": ["a dog barking", "x y"]},
        {"kind": "mc", "prediction": "neither", "answer": "a dog barking", "choices": ["a dog barking", "x y"]},
    ]
    out = score_predictions(records, CLASSES, class_aliases(PHRASES))
    assert out["label_accuracy"] == 0.5 and out["label_unparsed"] == 0.25 and out["label_n"] == 4
    assert out["label_chance"] == pytest.approx(1 / 5)
    assert out["order_accuracy"] == 0.5 and out["order_unparsed"] == 0.25 and out["order_chance"] == 0.5
    assert out["order_answer_a"] == 0.5


def test_scene_order_follows_the_composer():
    labels = ["dog", "piano"]
    assert _scene_order({"kind": "sequence", "role": "scene"}, labels) == ("dog", "piano")
    assert _scene_order({"kind": "sequence", "role": "counterfactual"}, labels) == ("piano", "dog")
    assert _scene_order({"kind": "attribute", "role": "counterfactual"}, labels) == ("dog", "piano")
    assert _scene_order({"kind": "rate", "role": "counterfactual"}, labels) == ("dog", "piano")
    assert _scene_order({"kind": "overlap", "role": "scene"}, labels) is None
    assert _scene_order({"kind": "overlap", "role": "counterfactual"}, labels) == ("dog", "piano")
    assert _scene_order({"kind": "sequence3", "role": "scene"}, [*labels, "water"]) is None


def test_config_section_is_optional_and_checked():
    assert load_config({"train": {"arms": {"a": {"loss": "infonce"}}}}).lalm.enabled is False
    cfg = load_config({"train": {"arms": {"a": {"loss": "infonce"}}}, "lalm": {"stage2": {"steps": 7}}})
    assert cfg.lalm.stage2.steps == 7 and cfg.lalm.stage2.lr == 5e-4
    with pytest.raises(ValueError, match="'lalm' does not accept option 'step'"):
        load_config({"train": {"arms": {"a": {"loss": "infonce"}}}, "lalm": {"step": 1}})


def test_stored_features_match_the_live_encoder(tmp_path):
    model = make_lalm()
    files = {}
    for i, seconds in enumerate((0.4, 0.7, 1.0)):
        files[f"k{i}"] = str(tmp_path / f"k{i}.wav")
        sf.write(files[f"k{i}"], tone(300 + 200 * i, seconds, TINY_RATE), TINY_RATE)
    waves = [torch.from_numpy(sf.read(f, dtype="float32")[0]) for f in files.values()]
    lengths = torch.tensor([len(w) for w in waves])
    clip = model.encoder.config.audio.clip_samples
    audio = torch.stack([torch.nn.functional.pad(w, (0, clip - len(w))) for w in waves])
    with torch.no_grad():
        tower = model.encoder.eval().audio_tower(audio, lengths)
    store = FeatureStore.from_outputs(list(files), [tower], torch.float32)
    feats = stored_sequences(model.encoder, store, list(files))
    assert all(f.shape[1] == model.encoder.sequence_dim for f in feats.values())
    assert check_stored_features(model, feats, files) < 1e-5
    moved = {k: v + 0.1 for k, v in feats.items()}
    assert check_stored_features(model, moved, files) > 1e-3  # the check does see a difference


def test_runner_trains_both_stages_and_scores(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    make_tokenizer().save_pretrained(tokenizer)
    llm = {
        "config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                   "tie_word_embeddings": False},
        "tokenizer": str(tokenizer),
    }  # fmt: skip
    parts = {"encoder": "htsat-tiny", "encoder_overrides": TINY_OVERRIDES, "encoder_pretrained": False, "llm": llm}
    dim = make_lalm().encoder.sequence_dim
    config = LalmSection(
        enabled=True,
        batch_size=4,
        precision="32-true",
        stage1=LalmStageSection(steps=2, lr=1e-2, warmup_steps=1),
        stage2=LalmStageSection(steps=2, lr=1e-2, warmup_steps=1),
        lora_rank=2,
        lora_alpha=4,
        max_new_tokens=4,
        eval_batch_size=8,
    )
    runner = LalmRunner(config, _data(dim=dim), parts, log=lambda line: None)
    s1 = runner.stage1(tmp_path / "stage1")
    assert s1["trainable"]["llm"] == 0 and s1["trainable"]["projector"] > 0 and s1["loss_last"] is not None
    assert s1["conversations"] == {"caption": 3 * len(CLASSES) + 3}
    s2 = runner.stage2(s1["adapter"], tmp_path / "stage2")
    assert s2["trainable"]["llm"] > 0 and (tmp_path / "stage2" / "adapter" / "lora").is_dir()
    assert set(s2["conversations"]) == {"label", "order", "caption"}  # caption = stage-1 replay
    metrics = runner.evaluate(s2["adapter"], tmp_path / "eval")
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(CLASSES) + 4 and metrics["label_n"] == len(CLASSES) and metrics["order_n"] == 4
    assert metrics["label_chance"] == pytest.approx(1 / len(CLASSES)) and metrics["order_chance"] == 0.5
    assert 0 <= metrics["label_accuracy"] <= 1 and 0 <= metrics["order_accuracy"] <= 1
