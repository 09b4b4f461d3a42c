"""Greedy CTC decoding on a real tiny model: repeats and blanks, padded frames, a predicted [UNK], and batched
transcription equal to one at a time and to the Trainer's dev scores, for a layer-norm and a group-norm encoder."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from forgetting.data.corpus import normalise_text
from forgetting.evaluation.scoring import error_rates, score_utterance
from forgetting.params import load_params
from forgetting.training.batching import Split
from forgetting.training.decoding import blank_padding_frames, eval_batch_size, greedy_decode, transcribe
from forgetting.training.model import (
    BLANK_ID,
    build_model,
    build_processor,
    load_trained,
)
from forgetting.training.trainer import train_ctc
from tests.unit.tiny import audio_batch

ROOT = Path(__file__).resolve().parents[3]
PARAMS = load_params(ROOT / "params.yaml")
def test_greedy_decode_collapses_repeats_and_drops_blanks(processor):
    vocab = processor.tokenizer.get_vocab()
    h, e, t, bar = vocab["h"], vocab["e"], vocab["t"], vocab["|"]
    ids = np.array([
        [h, h, e, BLANK_ID, e, t, t, bar, bar, t, -100, -100],  # "he" + "et", word break, "t"; -100 = padding
        [BLANK_ID, t, BLANK_ID, t, BLANK_ID, BLANK_ID, bar, BLANK_ID, h, -100, -100, -100],
    ])
    assert greedy_decode(ids, processor.tokenizer) == ["heet t", "tt h"]


def test_a_predicted_unk_is_dropped_not_scored_as_a_word(processor):
    vocab = processor.tokenizer.get_vocab()
    s, t, unk, bar, e = vocab["s"], vocab["t"], vocab["[UNK]"], vocab["|"], vocab["e"]
    ids = np.array([[s, t, unk, s, bar, e, e, BLANK_ID, e, bar, unk]])  # "st?s ee ?"
    (hypothesis,) = greedy_decode(ids, processor.tokenizer)
    assert normalise_text(hypothesis) == "sts ee"  # not "st unk s ee unk": one word is scored as one word


def test_padded_frames_decode_as_blank(params, processor):
    layer_norm = dataclasses.replace(params.model, config={**params.model.config, "feat_extract_norm": "layer"})
    model = build_model(layer_norm, processor.tokenizer.get_vocab(), seed=0).eval()  # padding-safe (group norm is not)
    values, mask = audio_batch()
    with torch.no_grad():
        batch = blank_padding_frames(model, model(values, attention_mask=mask).logits, mask)
        alone = model(values[1:, :9_600]).logits
    frames = alone.shape[1]
    assert torch.allclose(batch[1, :frames], alone[0], atol=1e-4)
    assert (batch[1, frames:].argmax(-1) == BLANK_ID).all()
    assert torch.equal(batch[0].argmax(-1), model(values[:1]).logits[0].argmax(-1))


@pytest.fixture(scope="module", params=["layer", "group"])
def trained(request, tmp_path_factory, corpus):
    """A tiny model (layer-norm or group-norm feature encoder, as wav2vec2-base) after one optimiser step (near its
    random init, so it emits many characters), its dev utterances and the dev scores the Trainer reported for it."""
    root = tmp_path_factory.mktemp(f"scoring-{request.param}")
    clips_dir, utterances = corpus.clips_dir, corpus.utterances
    processor = build_processor(corpus.vocab)
    params = dataclasses.replace(PARAMS.pretrain, max_steps=1, eval_steps=1, batch_size=4, effective_batch_size=4,
                                 lr=1e-6, dataloader_workers=0)
    config = {**PARAMS.model.config, "feat_extract_norm": request.param, "do_stable_layer_norm": request.param == "layer"}
    model = build_model(dataclasses.replace(PARAMS.model, config=config), processor.tokenizer.get_vocab(), seed=0)
    result = train_ctc(model, processor, Split(utterances[:4], clips_dir), {"nl": Split(utterances[4:], clips_dir)}, params,
                       "score", root / "model", root / "reports", root / "checkpoints", "s" * 64)
    return root / "model", clips_dir, utterances[4:], result


def test_batching_never_changes_a_hypothesis_and_matches_the_trainers_dev_scores(trained):
    model_dir, clips_dir, dev, result = trained
    model, processor = load_trained(model_dir)
    one_by_one = transcribe(model, processor, dev, clips_dir, batch_size=1, progress=False)
    batched = transcribe(model, processor, dev, clips_dir, batch_size=3, progress=False)
    assert batched == one_by_one
    assert sum(len(h) for h in batched) > 0  # a near-random model emits characters, so this compares something
    rates = error_rates([score_utterance(u.path, u.client_id, u.text, h) for u, h in zip(dev, batched, strict=True)])
    assert (rates["wer"], rates["cer"]) == pytest.approx((result.dev["nl"]["wer"], result.dev["nl"]["cer"]))
    group_norm = model.config.feat_extract_norm == "group"
    assert eval_batch_size(model, 16) == (1 if group_norm else 16)


def test_a_group_norm_encoder_would_change_hypotheses_if_batched(trained):
    """Why group-norm encoders decode one at a time: padding changes their frame posteriors (a layer-norm encoder's
    stay put)."""
    model, _ = load_trained(trained[0])
    values, mask = audio_batch()
    with torch.no_grad():
        padded = blank_padding_frames(model, model(values, attention_mask=mask).logits, mask)[1]
        alone = model(values[1:, :9_600]).logits[0]
    change = float((padded[: len(alone)] - alone).abs().max())
    assert change > 1e-2 if model.config.feat_extract_norm == "group" else change < 1e-4
