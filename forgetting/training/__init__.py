"""The CTC training core: the model, batches and samplers, transformers' Trainer with its one hook for a method
(`regulariser`), step guards, learning curves, checkpoints and resume, torchrun processes, greedy decoding.

It may import the top of the package and `data`; it knows no method (a method reaches it through a `Regulariser`).
"""
