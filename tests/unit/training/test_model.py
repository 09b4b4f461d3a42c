"""The tiny model and checkpoints: build, save/load, head replacement, the tokenizer, training settings, decoding."""

import dataclasses
import json
import logging

import pytest
import torch
from torch import nn

from forgetting.data.corpus import normalise_text
from forgetting.training.model import (
    ModelError,
    apply_training_config,
    build_model,
    build_processor,
    checkpoint_files,
    load_trained,
    save_model,
)
from tests.unit.checkpoints import GERMAN, german_ctc_replica, xls_r_replica
from tests.unit.tiny import SENTENCES, audio_batch, write_vocab


def test_tiny_model_is_sized_to_the_vocabulary(params, processor, vocab_path):
    model = build_model(params.model, processor.tokenizer.get_vocab(), seed=0)
    vocab_size = len(json.loads(vocab_path.read_text(encoding="utf-8")))
    assert len(processor.tokenizer) == vocab_size  # no <s>, </s> appended
    assert model.lm_head.out_features == model.config.vocab_size == vocab_size
    assert (model.config.pad_token_id, model.config.ctc_loss_reduction, model.config.ctc_zero_infinity) == (0, "mean", True)
    assert model.config.hidden_size == params.model.config["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    same = build_model(params.model, processor.tokenizer.get_vocab(), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values(), strict=True))


def test_bad_tiny_config_names_the_key(params, processor):
    bad = dataclasses.replace(params.model, config={**params.model.config, "hidden_size": "big"})
    with pytest.raises(ModelError, match=r"model\.config: not valid"):
        build_model(bad, processor.tokenizer.get_vocab(), seed=0)
    misspelt = dataclasses.replace(params.model, config={**params.model.config, "hiden_size": 64})
    with pytest.raises(ModelError, match=r"model\.config\.hiden_size"):
        build_model(misspelt, processor.tokenizer.get_vocab(), seed=0)


def test_saved_model_loads_with_identical_logits(params, processor, tmp_path):
    model = build_model(params.model, processor.tokenizer.get_vocab(), seed=0).eval()
    save_model(model, processor, tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model.safetensors", "config.json", "vocab.json", "tokenizer_config.json"} <= files
    assert not (tmp_path / "model.tmp").exists()
    loaded, loaded_processor = load_trained(tmp_path / "model")
    values, mask = audio_batch()
    with torch.no_grad():
        assert torch.equal(model(values, attention_mask=mask).logits, loaded(values, attention_mask=mask).logits)
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert [p.name for p in checkpoint_files(str(tmp_path / "model"))] == ["config.json", "model.safetensors",
                                                                          "tokenizer_config.json", "vocab.json"]
    assert checkpoint_files("tiny") == []


def test_checkpoint_with_another_vocabulary_gets_a_fresh_head(params, processor, tmp_path):
    other = build_processor(write_vocab(tmp_path / "small.json", ["abc"]))  # 6 tokens
    start = build_model(params.model, other.tokenizer.get_vocab(), seed=1)
    save_model(start, other, tmp_path / "start")
    start_config = json.loads((tmp_path / "start" / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "start" / "config.json").write_text(json.dumps({**start_config, "ctc_loss_reduction": "sum"}))
    model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start"), head="fresh"),
                        processor.tokenizer.get_vocab(), seed=0)
    assert model.lm_head.out_features == model.config.vocab_size == len(processor.tokenizer) != 6
    assert (model.config.pad_token_id, model.config.ctc_loss_reduction, model.config.ctc_zero_infinity) == (0, "mean", True)
    assert 0 < model.lm_head.weight.std() < 0.1  # initialised, not empty
    body = {k: v for k, v in start.state_dict().items() if not k.startswith("lm_head")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())  # the rest is the checkpoint's


def test_a_head_for_other_characters_of_the_same_number_is_refitted(params, processor, tmp_path):
    vocab = processor.tokenizer.get_vocab()
    letters = [t for t in vocab if len(t) == 1 and t != "|"]
    swapped = {**vocab, letters[0]: vocab[letters[1]], letters[1]: vocab[letters[0]]}  # same size, two ids swapped
    (tmp_path / "swapped.json").write_text(json.dumps(swapped, ensure_ascii=False), encoding="utf-8")
    other = build_processor(tmp_path / "swapped.json")
    start = build_model(params.model, other.tokenizer.get_vocab(), seed=1)
    save_model(start, other, tmp_path / "start")
    model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start"), head="fresh"), vocab, seed=0)
    assert model.lm_head.out_features == len(vocab)
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)  # a fresh head, not the swapped one
    by_token = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start"), head="by_token"), vocab, seed=0)
    assert torch.equal(by_token.lm_head.weight[vocab[letters[0]]], start.lm_head.weight[swapped[letters[0]]])
    assert torch.equal(by_token.lm_head.weight, start.lm_head.weight[[swapped[t] for t in sorted(vocab, key=vocab.get)]])
    kept = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start")), swapped, seed=0)
    assert torch.equal(kept.lm_head.weight, start.lm_head.weight)  # its own vocabulary: the head stays


@pytest.mark.parametrize("cut", [0, 100, 10_000])
def test_a_cut_weights_file_is_refused_with_its_name(params, processor, tmp_path, cut):
    save_model(build_model(params.model, processor.tokenizer.get_vocab(), seed=0), processor, tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:cut])
    with pytest.raises(ModelError, match=rf"{weights}: not a complete safetensors file .*run `dvc repro`"):
        load_trained(tmp_path / "model")


def test_a_vocabulary_that_does_not_fit_the_head_is_refused(params, processor, tmp_path):
    save_model(build_model(params.model, processor.tokenizer.get_vocab(), seed=0), processor, tmp_path / "model")
    (tmp_path / "model" / "vocab.json").write_text(json.dumps({"[PAD]": 0, "[UNK]": 1, "|": 2, "a": 3}), encoding="utf-8")
    with pytest.raises(ModelError, match=r"vocab\.json: 4 tokens, but the model's CTC head has \d+ outputs"):
        load_trained(tmp_path / "model")


def test_missing_checkpoint_is_named(params, processor, tmp_path):
    with pytest.raises(ModelError, match="no-such-model"):
        build_model(dataclasses.replace(params.model, name=str(tmp_path / "no-such-model")), {"a": 0}, seed=0)


@pytest.mark.parametrize("lang", ["nl", "de"])
def test_tokenizer_round_trips_normalised_text(processor, lang):
    tokenizer = processor.tokenizer
    for sentence in SENTENCES[lang]:
        text = normalise_text(sentence)
        ids = tokenizer(text.replace(" ", "|"))["input_ids"]
        assert 1 not in ids  # no [UNK]
        assert len(ids) == len(text)  # one token per character: ij is i + j, ë and ß are letters
        assert tokenizer.decode(ids, group_tokens=False) == text


def train_params(params, **changes):
    return dataclasses.replace(params.pretrain, **changes)


def test_training_config_takes_effect_on_a_loaded_model(params, processor, tmp_path):
    start = build_model(params.model, processor.tokenizer.get_vocab(), seed=0)
    apply_training_config(start, train_params(params, dropout=0.0, mask_time_prob=0.0))
    save_model(start, processor, tmp_path / "start")
    loaded = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start")), processor.tokenizer.get_vocab(), seed=0)
    values, mask = audio_batch()

    def forward_twice() -> tuple[torch.Tensor, torch.Tensor]:
        loaded.train()
        with torch.no_grad():
            return loaded(values, attention_mask=mask).logits, loaded(values, attention_mask=mask).logits

    first, second = forward_twice()
    assert torch.equal(first, second)  # saved with dropout 0: deterministic in train mode
    apply_training_config(loaded, train_params(params, dropout=0.3, layerdrop=0.1))
    dropouts = [m.p for m in loaded.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and set(dropouts) == {0.3}
    assert {m.dropout for m in loaded.modules() if isinstance(getattr(m, "dropout", None), float)} == {0.3}
    assert (loaded.config.hidden_dropout, loaded.config.final_dropout, loaded.config.layerdrop) == (0.3, 0.3, 0.1)
    first, second = forward_twice()
    assert not torch.equal(first, second)
    apply_training_config(loaded, train_params(params, dropout=0.0))
    assert torch.equal(*forward_twice())


def test_model_trained_without_masking_reloads_key_for_key(params, processor, tmp_path):
    model = build_model(params.model, processor.tokenizer.get_vocab(), seed=0)  # built with the config default, 0.05
    apply_training_config(model, train_params(params, mask_time_prob=0.0))
    assert not hasattr(model.wav2vec2, "masked_spec_embed")
    save_model(model, processor, tmp_path / "model")
    loaded, _ = load_trained(tmp_path / "model")
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_a_checkpoints_own_feature_masking_is_replaced_by_the_param(params, processor, tmp_path):
    config = {**params.model.config, "mask_time_prob": 0.0, "mask_feature_prob": 0.3, "mask_feature_length": 2}
    start = build_model(dataclasses.replace(params.model, config=config), processor.tokenizer.get_vocab(), seed=0)
    save_model(start, processor, tmp_path / "start")
    loaded = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start")), processor.tokenizer.get_vocab(), seed=0)
    assert loaded.config.mask_feature_prob == 0.3
    apply_training_config(loaded, train_params(params, mask_time_prob=0.0, mask_feature_prob=0.0))
    assert loaded.config.mask_feature_prob == 0.0 and not hasattr(loaded.wav2vec2, "masked_spec_embed")
    values, mask = audio_batch()
    loaded.train()
    with torch.no_grad():
        first, second = (loaded(values, attention_mask=mask).logits for _ in range(2))
    assert torch.equal(first, second)  # no masking left on: training forward passes are the same
    apply_training_config(loaded, train_params(params, mask_time_prob=0.0, mask_feature_prob=0.5))
    assert loaded.config.mask_feature_prob == 0.5
    with torch.no_grad():
        first, second = (loaded(values, attention_mask=mask).logits for _ in range(2))
    assert not torch.equal(first, second)


def test_time_masking_on_a_checkpoint_built_without_it(params, processor, tmp_path):
    start = build_model(dataclasses.replace(params.model, config={**params.model.config, "mask_time_prob": 0.0}),
                        processor.tokenizer.get_vocab(), seed=0)
    assert not hasattr(start.wav2vec2, "masked_spec_embed")
    save_model(start, processor, tmp_path / "start")
    loaded = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start")), processor.tokenizer.get_vocab(), seed=0)
    apply_training_config(loaded, train_params(params, mask_time_prob=0.5))
    assert loaded.wav2vec2.masked_spec_embed.requires_grad
    values, mask = audio_batch()
    loaded.train()
    with torch.no_grad():
        masked = loaded(values, attention_mask=mask).logits
        loaded.eval()
        assert not torch.equal(masked, loaded(values, attention_mask=mask).logits)


def test_freeze_feature_encoder(params, processor):
    model = build_model(params.model, processor.tokenizer.get_vocab(), seed=0)
    apply_training_config(model, train_params(params, freeze_feature_encoder=True))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("wav2vec2.feature_extractor.") for name in frozen)


def test_a_pre_training_checkpoint_loads_with_its_quantiser_dropped_in_one_line(params, processor, tmp_path, caplog):
    replica = xls_r_replica(tmp_path / "xls-r")
    vocab = processor.tokenizer.get_vocab()
    with caplog.at_level(logging.INFO, logger="forgetting.training.model"):
        model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "xls-r")), vocab, seed=0)
    pre_training_only = [k for k in replica.state_dict() if not k.startswith("wav2vec2.")]
    assert {k.split(".")[0] for k in pre_training_only} == {"quantizer", "project_q", "project_hid"}
    (dropped,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert f": {len(pre_training_only)} weights that a CTC model has no use for were dropped (project_hid, project_q, " \
           "quantizer)" in dropped
    (fitted,) = [r.getMessage() for r in caplog.records if "CTC head fitted" in r.getMessage()]
    assert f"0 of its {len(vocab)} outputs kept" in fitted and "no vocab.json" in fitted
    assert model.lm_head.out_features == len(vocab)
    body = replica.wav2vec2.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in model.wav2vec2.state_dict().items())  # the encoder is XLS-R's


def test_a_head_for_other_characters_keeps_the_rows_of_the_shared_ones(params, processor, tmp_path, caplog):
    german = german_ctc_replica(tmp_path / "de")
    vocab = processor.tokenizer.get_vocab()  # Dutch and German letters, [PAD] the blank, [UNK], |
    theirs = {t: i for i, t in enumerate(GERMAN)}
    names = {"[PAD]": "<pad>", "[UNK]": "<unk>"}  # the word delimiter is | in both
    shared = {t for t in vocab if names.get(t, t) in theirs}
    assert {"[PAD]", "[UNK]", "|", "a", "ß"} <= shared and shared < set(vocab)  # é, ë, ï ... are new
    with caplog.at_level(logging.WARNING, logger="forgetting.training.model"):
        model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "de"), head="by_token"), vocab, seed=0)
    assert f"{len(shared)} of its {len(vocab)} outputs kept from the checkpoint's head, {len(vocab) - len(shared)} new" \
        in caplog.text
    for token, row in vocab.items():
        same = torch.equal(model.lm_head.weight[row], german.lm_head.weight[theirs.get(names.get(token, token), 0)])
        assert same == (token in shared), token
        if token in shared:
            assert model.lm_head.bias[row] == german.lm_head.bias[theirs[names.get(token, token)]], token
    fresh = build_model(dataclasses.replace(params.model, name=str(tmp_path / "de"), head="fresh"), vocab, seed=0)
    assert not any(torch.equal(fresh.lm_head.weight[vocab[t]], german.lm_head.weight[theirs[names.get(t, t)]])
                   for t in shared)


def test_a_bin_that_holds_more_than_tensors_is_refused_unopened(params, processor, tmp_path, capsys):
    german_ctc_replica(tmp_path / "de")
    weights = tmp_path / "de" / "pytorch_model.bin"
    torch.save({**torch.load(weights, weights_only=True), "payload": Payload()}, weights)
    with pytest.raises(ModelError, match=r"its weights file holds objects other than tensors, which are never unpickled"):
        build_model(dataclasses.replace(params.model, name=str(tmp_path / "de")), processor.tokenizer.get_vocab(), seed=0)
    assert "unpickled!" not in capsys.readouterr().out


class Payload:
    """What a malicious .bin holds: an object whose unpickling runs a call."""

    def __reduce__(self):
        return print, ("unpickled!",)


def test_under_bf16_autocast_the_ctc_loss_is_float32(params, processor):
    """Autocast runs the model's matrix products in bfloat16; the log-softmax and the CTC loss stay in float32
    (transformers' CTC loss casts the log-probabilities), as they must: CTC sums log-probabilities over every path."""
    model = build_model(params.model, processor.tokenizer.get_vocab(), seed=0).eval()
    values, mask = audio_batch()
    labels = torch.tensor([[5, 6, 7], [8, 9, -100]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(values, attention_mask=mask, labels=labels)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    with torch.no_grad():
        full = model(values, attention_mask=mask, labels=labels)
    assert abs(float(out.loss) - float(full.loss)) < 0.05 * float(full.loss)  # the same loss, to bf16's rounding


def test_a_checkpoint_saved_in_half_precision_loads_in_float32(params, processor, tmp_path):
    save_model(build_model(params.model, processor.tokenizer.get_vocab(), seed=0).half(), processor, tmp_path / "start")
    model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start")), processor.tokenizer.get_vocab(),
                        seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast's business, over float32 weights


def test_our_tokens_with_another_blank_are_refitted_so_the_blank_stays_the_blank(params, processor, tmp_path, caplog):
    vocab = processor.tokenizer.get_vocab()
    start = build_model(params.model, vocab, seed=1)
    start.config.pad_token_id = vocab["[UNK]"]  # the same tokens and ids, but its CTC blank is another output
    save_model(start, processor, tmp_path / "start")
    with caplog.at_level(logging.WARNING, logger="forgetting.training.model"):
        model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "start"), head="by_token"), vocab, seed=0)
    assert f"its blank is output {vocab['[UNK]']}, ours 0" in caplog.text
    assert torch.equal(model.lm_head.weight[0], start.lm_head.weight[vocab["[UNK]"]])  # our blank is its blank
    assert model.config.pad_token_id == 0


def test_special_tokens_in_their_content_form_are_read(params, processor, tmp_path):
    german_ctc_replica(tmp_path / "de")
    their_vocab = tmp_path / "de" / "vocab.json"  # its unknown token named <oov>, not the usual <unk>
    their_vocab.write_text(their_vocab.read_text(encoding="utf-8").replace('"<unk>"', '"<oov>"'), encoding="utf-8")
    names = tmp_path / "de" / "special_tokens_map.json"
    names.write_text(json.dumps({"unk_token": {"content": "<oov>", "lstrip": False}, "pad_token": {"content": "<pad>"}}))
    (tmp_path / "de" / "tokenizer_config.json").unlink()
    vocab = processor.tokenizer.get_vocab()
    model = build_model(dataclasses.replace(params.model, name=str(tmp_path / "de")), vocab, seed=0)
    german = torch.load(tmp_path / "de" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.lm_head.weight[vocab["[UNK]"]], german["lm_head.weight"][GERMAN.index("<unk>")])
