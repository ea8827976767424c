"""A fine-tuning run that measures L_ft and L_f at scheduled steps, and the pieces it is made of.

- :mod:`~forgetscale.training.run`: the run itself (the step loop, its evaluation schedule,
  resume, divergence) -- read it top to bottom;
- :mod:`~forgetscale.training.methods`: which parameters a method trains (LoRA/IA3 via PEFT,
  top layers, full);
- :mod:`~forgetscale.training.optim`: optimizer, learning-rate schedule, data order;
- :mod:`~forgetscale.training.checkpoint`: pickle-free checkpoints and RNG state;
- :mod:`~forgetscale.training.lock`: one process per run;
- :mod:`~forgetscale.training.outputs`: where a run writes, checked before any work;
- :mod:`~forgetscale.training.result`: what a run reports back.

L_ft and L_f themselves are computed in :mod:`forgetscale.metrics`.
"""

from forgetscale.training.result import TrainResult
from forgetscale.training.run import train

__all__ = ["TrainResult", "train"]
