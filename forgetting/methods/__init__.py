"""The continual-learning methods: the importance (Fisher, MAS) and its per-utterance gradients, the EWC/MAS/L2
penalty, distillation, LoRA, replay, weight averaging, and the registry that turns `adapt.method` into them.

It may import the top of the package, `data` and `training`; it knows nothing of evaluation.
"""
