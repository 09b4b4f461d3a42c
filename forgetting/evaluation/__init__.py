"""The numbers a thesis reports: WER/CER and their speaker-level statistics, experiments read from `dvc exp show`
and their estimates, the tables in Markdown and LaTeX, and every figure.

It may import the top of the package and `data`; it knows nothing of training internals or of the methods.
"""
