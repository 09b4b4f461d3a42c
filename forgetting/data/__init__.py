"""The corpus: metadata rows and the one text normalisation, sampling and splits, a Hugging Face dataset as a source,
audio decoding and the clip checks. What every later part trains and scores on.

It may import the top of the package only (params, schema, layout, io, errors): it knows nothing of training.
"""
