"""Training for the AsCAN models: ``fit`` (classifiers), ``fit_diffusion`` (UNets), ``validate``.

    from ascan.train import fit, validate
    summary = fit()                                   # ascan_t on the embedded digits
    summary = fit(model="ascan_s", data="/data/imagenet", epochs=90, batch_size=1024,
                  amp="bf16", channels_last=True, ema=0.9998, out="runs/s")
    validate("runs/s/best.safetensors", data="/data/imagenet")

Modules: ``loop`` (the one loop: distributed, optimizer, EMA, logging, checkpoints),
``classify`` and ``diffusion`` (the tasks), ``data``, ``optim``, ``checkpoint``,
``distributed``. The command line is ``python -m ascan train / validate / train-diffusion``.
"""
from .checkpoint import CheckpointError
from .classify import ClassifierConfig, fit, load_classifier, validate
from .data import DataError
from .loop import LoopConfig, TrainingError

__all__ = ["fit", "validate", "load_classifier", "ClassifierConfig", "LoopConfig", "CheckpointError",
           "DataError", "TrainingError"]
