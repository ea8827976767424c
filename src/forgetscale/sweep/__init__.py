"""Sweeps: a grid of training runs on local workers, a Ray cluster or Slurm, merged into one
results store (``forgetscale sweep``).

- :mod:`~forgetscale.sweep.spec`: the sweep file, expanded into ordinary train configs;
- :mod:`~forgetscale.sweep.status`: where each run stands, P from the model's config alone,
  the dry-run table;
- :mod:`~forgetscale.sweep.driver`: references built once, dispatch, merging run folders;
- :mod:`~forgetscale.sweep.worker`: one run trained inside its own folder;
- :mod:`~forgetscale.sweep.executors`: where workers run (local, Ray, Slurm), one module each;
- :mod:`~forgetscale.sweep.options`: typed option blocks (``resources:``, executor options).
"""
