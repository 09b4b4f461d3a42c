"""Local replicas of the checkpoints users start from, in their published layouts and with their config keys, scaled
down (hidden 32, two layers) and built here, no download:

- `xls_r_replica`: XLS-R as published, a pre-training checkpoint (`Wav2Vec2ForPreTraining`, quantiser and projection
  weights, a feature extractor's `preprocessor_config.json`), with no tokenizer and no CTC head;
- `german_ctc_replica`: the seed's `wav2vec2-large-xlsr-53-german-with-lm`, a CTC model of another vocabulary (`<pad>`
  the blank, `<s>`, `</s>`, `<unk>`, `|`, German letters) whose weights are `pytorch_model.bin` only, with its
  `language_model/` folder in the `Wav2Vec2ProcessorWithLM` layout (a KenLM ARPA, `unigrams.txt`, `attrs.json`).
"""

import json
from pathlib import Path

import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
)

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[32] * 7,
             conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], feat_extract_norm="layer",
             do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
             codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8, num_codevector_groups=2,
             mask_time_prob=0.05, mask_feature_prob=0.0)
GERMAN = ["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyzäöüß", "'"]
ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.3
-1.0\t</s>
-0.7\thallo\t-0.3
-0.7\twelt\t-0.3

\\2-grams:
-0.3\t<s> hallo
-0.3\thallo welt

\\end\\
"""


def _features() -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


def xls_r_replica(folder: Path) -> Wav2Vec2ForPreTraining:
    """A pre-training checkpoint as XLS-R publishes it: weights (quantiser included), config, feature extractor."""
    torch.manual_seed(3)
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**SMALL, architectures=["Wav2Vec2ForPreTraining"]))
    model.save_pretrained(folder)
    _features().save_pretrained(folder)
    return model


def german_ctc_replica(folder: Path) -> Wav2Vec2ForCTC:
    """A German CTC checkpoint with its own vocabulary, `pytorch_model.bin` only, and an n-gram LM folder."""
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(GERMAN)}, ensure_ascii=False),
                                       encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    tokenizer.save_pretrained(folder)
    _features().save_pretrained(folder)
    torch.manual_seed(4)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**SMALL, vocab_size=len(GERMAN), pad_token_id=0, architectures=["Wav2Vec2ForCTC"]))
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    lm = folder / "language_model"
    lm.mkdir()
    (lm / "5gram_correct.arpa").write_text(ARPA, encoding="utf-8")
    (lm / "unigrams.txt").write_text("hallo\nwelt\n", encoding="utf-8")
    (lm / "attrs.json").write_text(json.dumps({"alpha": 0.5, "beta": 1.5, "unk_score_offset": -10.0,
                                               "score_boundary": True}), encoding="utf-8")
    return model
