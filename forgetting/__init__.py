"""forgetting: the library behind the pipeline's stages (corpus, audio, training, Fisher, EWC, scoring, reports).

It knows nothing of DVC or of argument parsing: `stages/` holds the entry points that `dvc.yaml` runs.
"""
