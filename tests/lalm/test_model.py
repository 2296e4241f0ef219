"""AudioLanguageModel: splicing, long audio, batching, training stages, save → load."""

from __future__ import annotations

import json

import pytest
import torch

import clapkit.lalm
from clapkit.accel import onednn
from clapkit.lalm import IGNORE_INDEX, ConversationSample, configure_stage
from clapkit.lalm.chat import end_of_turn_ids
from tests.lalm.conftest import PROJECTOR_PARAMS, make_lalm, tone

QA = [{"role": "user", "content": "<Audio>\nWhat sound is this?"}, {"role": "assistant", "content": "A dog."}]


def _samples():
    return [
        ConversationSample("a", QA, [tone(440, 1.5)]),
        ConversationSample(
            "b",
            [
                {"role": "user", "content": "<Audio>\nWhat is this?"},
                {"role": "assistant", "content": "A bell."},
                {"role": "user", "content": "And this? <Audio>"},
                {"role": "assistant", "content": "A car."},
            ],
            [tone(300, 0.4), tone(900, 2.2)],
        ),
        ConversationSample("c", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]),
    ]


def test_audio_tokens_are_spliced_after_each_marker_in_order():
    model = make_lalm("linear")
    samples = _samples()
    batch = model.collator()(samples)
    tokens, mask = model.encode_audio(batch["audio"], batch["audio_lengths"])
    inputs = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["audio"],
                                  batch["audio_lengths"])  # fmt: skip
    clip = 0
    for b, sample in enumerate(samples):
        ids = batch["input_ids"][b][batch["attention_mask"][b].bool()]
        n_audio = sum(int(mask[clip + k].sum()) for k in range(len(sample.audio)))
        assert int(inputs.attention_mask[b].sum()) == len(ids) + n_audio
        labels = inputs.labels[b]
        shift = 0
        for pos in (ids == model.audio_id).nonzero().squeeze(1).tolist():
            n = int(mask[clip].sum())
            start = pos + 1 + shift
            torch.testing.assert_close(inputs.embeds[b, start : start + n], tokens[clip][mask[clip]])
            assert (labels[start : start + n] == IGNORE_INDEX).all()
            assert int(ids[pos + 1]) == model.audio_end_id
            torch.testing.assert_close(
                inputs.embeds[b, start + n], model.llm.get_input_embeddings().weight[model.audio_end_id]
            )
            shift += n
            clip += 1
        text_labels = batch["labels"][b][batch["attention_mask"][b].bool()]
        assert (labels[labels != IGNORE_INDEX] == text_labels[text_labels != IGNORE_INDEX]).all()
    assert clip == batch["audio"].shape[0] == 3


def test_long_audio_is_windowed_and_encoder_batch_does_not_change_it():
    model = make_lalm("linear")
    wave = tone(220, 3.5)[None]  # 3.5 clips of the 1 s encoder
    lengths = torch.tensor([wave.shape[1]])
    tokens, mask = model.encode_audio(wave, lengths)
    feats, fmask = model.encoder.audio_sequence(wave, lengths)  # the encoder's own windowing
    torch.testing.assert_close(tokens, model.projector(feats, fmask)[0])
    assert mask.sum() == fmask.sum() == 56  # 3 full windows of 16 frames + half a window
    model.config.encoder_batch = 1
    tokens1, mask1 = model.encode_audio(wave, lengths)
    torch.testing.assert_close(tokens1, tokens)
    assert torch.equal(mask1, mask)


@pytest.mark.parametrize("stage", [1, 2])
def test_loss_only_forward_gives_the_same_loss_and_gradients(stage):
    model = make_lalm("mlp2x_gelu", downsample=2)
    if stage == 2:
        configure_stage(model, 2, lora={"r": 2})
    batch = model.collator()(_samples())

    def run(**kwargs):
        model.zero_grad()
        out = model.step(batch, **kwargs)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, grads = run()
    seen = []  # rows the vocabulary-wide head computes
    head = model.llm.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: seen.append(out.shape[:-1].numel()))
    fast, fast_grads = run(return_logits=False)
    handle.remove()
    assert seen == [(batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()]  # the target tokens only
    assert fast.logits is None and full.logits.shape[0] == 3  # full logits only when asked for
    torch.testing.assert_close(fast.loss, full.loss)
    assert grads.keys() == fast_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(fast_grads[name], grad, msg=name)
    count = torch.tensor(7)  # transformers' Trainer passes the number of target tokens: loss = sum / count
    summed = model.step(batch, num_items_in_batch=count).loss
    torch.testing.assert_close(model.step(batch, return_logits=False, num_items_in_batch=count).loss, summed)


@pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear kernel")
def test_float32_cpu_llm_runs_on_onednn_with_the_same_loss_gradients_and_generation(monkeypatch):
    """In float32 on the CPU the LLM's linear layers (base, LoRA and head) run as oneDNN inner products, in the
    training step and in generation; the loss, every gradient and the greedy answers equal F.linear's."""
    model = make_lalm("mlp2x_gelu", downsample=2)
    configure_stage(model, 2, lora={"r": 2})
    batch = model.collator()(_samples())
    prompts = model.collator(generation=True)([ConversationSample("a", QA[:1], [tone(440, 1.5)])])
    calls: list[int] = []
    apply = onednn.OneDnnLinear.apply
    monkeypatch.setattr(onednn.OneDnnLinear, "apply", lambda *a: calls.append(1) or apply(*a))

    def run(**kwargs):
        model.zero_grad()
        out = model.step(batch, **kwargs)
        out.loss.backward()
        answer = model.generate_batch(prompts, max_new_tokens=4)
        return out.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, answer

    layers = model.llm.get_base_model().config.num_hidden_layers
    for kwargs in ({}, {"return_logits": False}):
        calls.clear()
        loss, grads, answer = run(**kwargs)
        assert len(calls) > 7 * 3 * layers  # 7 base linears per block, each with LoRA A and B, plus the head
        monkeypatch.setattr(onednn, "_AVAILABLE", False)
        calls.clear()
        ref_loss, ref_grads, ref_answer = run(**kwargs)
        monkeypatch.setattr(onednn, "_AVAILABLE", True)
        assert calls == [] and answer == ref_answer
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys() and grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's own bf16 GEMMs: left alone
        model.step(batch, return_logits=False)
    assert calls == []


def test_precomputed_features_give_the_same_tokens_and_loss():
    model = make_lalm("mlp2x_gelu", downsample=2)
    samples = _samples()
    with torch.no_grad():
        feats = []
        for s in samples:
            for wave in s.audio:
                f, m = model.encoder.audio_sequence(wave[None], torch.tensor([len(wave)]))
                feats.append(f[0][m[0]])
    stored = []
    for s in samples:
        own, feats = feats[: len(s.audio)], feats[len(s.audio) :]
        stored.append(ConversationSample(s.key, s.messages, features=own))
    live, cached = model.collator()(samples), model.collator()(stored)
    assert "audio" not in cached and cached["audio_features"].shape[0] == 3 and cached["audio_features_mask"].any()
    torch.testing.assert_close(model.step(cached).loss, model.step(live).loss)
    gen = model.collator(generation=True)
    prompts = [ConversationSample(s.key, s.prompt()[0], features=s.features) for s in stored[:2]]
    live_prompts = [ConversationSample(s.key, s.prompt()[0], s.audio) for s in samples[:2]]
    assert model.generate_batch(gen(prompts), max_new_tokens=3) == model.generate_batch(
        gen(live_prompts), max_new_tokens=3
    )
    with pytest.raises(ValueError, match="audio or as features"):
        ConversationSample("x", QA, [tone(440, 0.5)], features=[torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="mixes"):
        model.collator()([samples[0], stored[1]])


def test_attn_implementation_setting_reaches_the_llm():
    model = make_lalm("linear")
    tokenizer, llm = model.tokenizer, model.llm
    config = clapkit.lalm.LalmConfig(projector="linear", attn_implementation="eager")
    rebuilt = clapkit.lalm.AudioLanguageModel(model.encoder, model.projector, llm, tokenizer, config)
    assert rebuilt.llm.config._attn_implementation == "eager"


def test_marker_and_clip_counts_must_agree():
    model = make_lalm("linear")
    with pytest.raises(ValueError, match="1 <Audio> markers but 2 clips"):
        ConversationSample("k", QA, [tone(100, 1), tone(200, 1)])
    batch = model.collator()([ConversationSample("k", QA, [tone(100, 1)])])
    with pytest.raises(ValueError, match="1 <Audio> markers but 0 clips"):
        model.prepare_inputs(batch["input_ids"], batch["attention_mask"])


def _open_gates(model) -> None:
    with torch.no_grad():
        for name, p in model.projector.named_parameters():
            if "gate" in name:
                p.fill_(0.5)


@pytest.mark.parametrize("name", ["mlp2x_gelu", "qformer", "xattn"])
def test_batched_generation_matches_one_by_one(name):
    model = make_lalm(name, **PROJECTOR_PARAMS[name])
    _open_gates(model)
    samples = _samples()
    collate = model.collator(generation=True)
    batch = collate(samples)
    assert batch["references"] == ["A dog.", "A car.", "Hello."]
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded
    together = model.generate_batch(batch, max_new_tokens=6)
    alone = [model.generate_batch(collate([s]), max_new_tokens=6)[0] for s in samples]
    assert together == alone
    assert all(isinstance(t, str) and t for t in together)


def test_xattn_cached_generation_matches_step_by_step_forward():
    model = make_lalm("xattn", **PROJECTOR_PARAMS["xattn"])
    _open_gates(model)
    with torch.no_grad():
        model.projector.blocks[0].attn.out_proj.weight.mul_(50)  # make the audio matter
    batch = model.collator(generation=True)(_samples()[1:2])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    eos = set(end_of_turn_ids(model.llm, model.tokenizer))
    greedy = []
    with torch.no_grad():
        for _ in range(8):  # no KV cache: every step re-reads the whole sequence
            logits = model(ids, mask, audio=batch["audio"], audio_lengths=batch["audio_lengths"]).logits
            token = int(logits[0, -1].argmax())
            if token in eos:
                break
            greedy.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
    expected = model.tokenizer.decode(greedy, skip_special_tokens=True).strip()
    assert model.generate_batch(batch, max_new_tokens=8) == [expected]


def test_generate_accepts_files_arrays_and_history(tmp_path):
    import soundfile as sf

    model = make_lalm("linear")
    path = tmp_path / "clip.wav"
    sf.write(path, tone(440, 1.0).numpy(), 16000)
    from_file = model.generate(str(path), "What sound is this?", max_new_tokens=4)
    from_array = model.generate(tone(440, 1.0), "What sound is this?", max_new_tokens=4)
    assert from_file == from_array
    resampled = model.generate((tone(440, 1.0, rate=8000).numpy(), 8000), "What sound is this?", max_new_tokens=4)
    assert isinstance(resampled, str)
    two_turns = model.generate(
        [tone(440, 1.0), tone(880, 1.0)],
        "And this one?",
        history=[{"role": "user", "content": "<Audio> What is it?"}, {"role": "assistant", "content": "A tone."}],
        max_new_tokens=4,
    )
    assert isinstance(two_turns, str)


def test_configure_stage_sets_trainable_parts():
    model = make_lalm("mlp2x_gelu")
    counts = model.trainable_counts()
    assert counts["projector"] > 0 and counts["llm"] == 0 and counts["encoder"] == 0  # stage 1 by default
    assert configure_stage(model, 1) == counts
    with pytest.raises(ValueError, match="stage 1 trains the projector only"):
        configure_stage(model, 1, full_llm=True)
    with pytest.raises(ValueError, match="either lora"):
        configure_stage(model, 2)
    with pytest.raises(ValueError, match="stage must be"):
        configure_stage(model, 3)
    full = configure_stage(model, 2, full_llm=True, unfreeze_encoder=True)
    assert full["llm"] == sum(p.numel() for p in model.llm.parameters())
    audio_params = sum(p.numel() for p in model.encoder.audio_tower.parameters())
    assert full["encoder"] == audio_params  # the text tower stays frozen
    model.train()
    assert model.encoder.audio_tower.training and not model.encoder.text_tower.training

    lora_model = make_lalm("mlp2x_gelu")
    lora = configure_stage(lora_model, 2, lora={"r": 4, "lora_alpha": 8})
    names = [n for n, p in lora_model.llm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert 0 < lora["llm"] < sum(p.numel() for p in lora_model.llm.parameters()) // 2
    assert configure_stage(lora_model, 1)["llm"] == 0


def _train(model, batch, steps: int = 2) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    losses = []
    for _ in range(steps + 1):
        loss = model.step(batch).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return losses


@pytest.mark.parametrize("name", ["mlp2x_gelu", "xattn"])
def test_two_stages_train_then_save_load_gives_same_generation(tmp_path, name):
    model = make_lalm(name, **PROJECTOR_PARAMS[name])
    batch = model.collator()(_samples())
    llm_before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    stage1 = _train(model, batch)
    assert stage1[-1] < stage1[0]
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm_before.items())  # LLM untouched
    configure_stage(model, 2, lora={"r": 4, "lora_alpha": 8})
    stage2 = _train(model, batch)
    assert stage2[-1] < stage2[0]

    prompt = model.collator(generation=True)(_samples())
    expected = model.generate_batch(prompt, max_new_tokens=8)
    out = model.save_pretrained(tmp_path / "adapter")
    parts = json.loads((out / "lalm_config.json").read_text())["parts"]
    assert parts == {"encoder": "encoder", "llm": "llm", "lora": "lora"}  # in-memory parts are saved whole
    assert (out / "lora" / "adapter_model.safetensors").is_file()

    loaded = clapkit.lalm.load(out)
    assert loaded.config.projector == name
    torch.testing.assert_close(loaded.projector.state_dict(), model.projector.state_dict())
    assert loaded.generate_batch(loaded.collator(generation=True)(_samples()), max_new_tokens=8) == expected
    assert loaded.trainable_counts()["llm"] == 0  # loaded for inference
    with torch.no_grad():
        logits = model.step(batch).logits
        torch.testing.assert_close(loaded.step(batch).logits, logits)
        with model.llm.disable_adapter():  # the LoRA weights were trained, saved and restored
            assert not torch.allclose(model.step(batch).logits, logits)

    merged = clapkit.lalm.load(out, merge_lora=True)  # LoRA folded into the weights: the same model
    assert not hasattr(merged.llm, "peft_config")
    assert merged.generate_batch(merged.collator(generation=True)(_samples()), max_new_tokens=8) == expected
    with torch.no_grad():
        torch.testing.assert_close(merged.step(batch).logits, logits, atol=1e-5, rtol=1e-5)


def test_frozen_linears_in_the_autocast_dtype_give_the_same_outputs():
    model = make_lalm("mlp2x_gelu", downsample=2).eval()
    configure_stage(model, 2, lora={"r": 2})
    batch = model.collator()(_samples())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model.step(batch).logits
        prompt = model.collator(generation=True)(_samples())
        generated = model.generate_batch(prompt, max_new_tokens=6)
        layers = model.llm.config.num_hidden_layers
        assert model.cast_frozen_linears(torch.bfloat16) == 7 * layers  # q k v o gate up down, not LoRA nor head
        assert model.llm.get_output_embeddings().weight.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        torch.testing.assert_close(model.step(batch).logits, expected, atol=0, rtol=0)
        assert model.generate_batch(prompt, max_new_tokens=6) == generated


def test_full_finetune_and_referenced_llm_round_trip(tmp_path):
    model = make_lalm("qformer", **PROJECTOR_PARAMS["qformer"])
    llm_dir = tmp_path / "llm"
    model.llm.save_pretrained(llm_dir)
    model.tokenizer.save_pretrained(llm_dir)
    enc_dir = model.encoder.save_pretrained(tmp_path / "encoder")
    model.config.llm, model.config.encoder = str(llm_dir), str(enc_dir)
    model.save_pretrained(tmp_path / "ref")
    parts = json.loads((tmp_path / "ref" / "lalm_config.json").read_text())["parts"]
    assert parts == {}  # frozen encoder and untouched LLM are referenced, not copied
    prompt = model.collator(generation=True)(_samples())
    expected = model.generate_batch(prompt, max_new_tokens=6)
    assert clapkit.lalm.load(tmp_path / "ref").generate_batch(prompt, max_new_tokens=6) == expected

    configure_stage(model, 2, full_llm=True, unfreeze_encoder=True)
    _train(model, model.collator()(_samples()), steps=1)
    expected = model.generate_batch(prompt, max_new_tokens=6)
    model.save_pretrained(tmp_path / "full")
    parts = json.loads((tmp_path / "full" / "lalm_config.json").read_text())["parts"]
    assert parts == {"encoder": "encoder", "llm": "llm"}
    loaded = clapkit.lalm.load(tmp_path / "full")
    assert loaded.generate_batch(prompt, max_new_tokens=6) == expected


def test_load_rejects_other_folders(tmp_path):
    with pytest.raises(ValueError, match="no lalm_config.json"):
        clapkit.lalm.load(tmp_path)
    (tmp_path / "lalm_config.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a clapkit LALM config"):
        clapkit.lalm.load(tmp_path)
    # A config with a key this version does not know, or a value of the wrong type: named with the file.
    (tmp_path / "lalm_config.json").write_text(json.dumps({"format": "clapkit-lalm", "config": {"encoders": "x"}}))
    with pytest.raises(ValueError, match=r"lalm_config\.json: unknown keys \['encoders'\]; valid keys: .*'encoder'"):
        clapkit.lalm.load(tmp_path)


def test_lalm_config_parses_strictly():
    cfg = clapkit.lalm.LalmConfig.from_dict({"max_audio_seconds": 30, "projector_params": {"downsample": 2}})
    assert cfg.max_audio_seconds == 30.0 and isinstance(cfg.max_audio_seconds, float)  # JSON's 30 for 30.0
    assert clapkit.lalm.LalmConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"LALM config: .*\"max_length\".*int"):
        clapkit.lalm.LalmConfig.from_dict({"max_length": "long"})
