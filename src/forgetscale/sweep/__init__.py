"""Sweeps: a grid of training runs on local workers, a Ray cluster or Slurm, merged into one
results store (``forgetscale sweep``)."""
