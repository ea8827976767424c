"""Published constants, registered as presets ``law:name`` by :mod:`forgetscale.laws`.

``kalajdzievski:openorca`` and ``kalajdzievski:news`` are Table 1 of Kalajdzievski,
"Scaling Laws for Forgetting When Fine-Tuning Large Language Models"
(arXiv 2401.05605): Llama 2 7B chat, LoRA ranks 8..256 on all linear attention and
MLP modules, 260 steps, fitted on steps after the first 50. The functional form they
plug into (``forgetscale.laws.library``, law ``kalajdzievski``) is reconstructed from
these constants; see that law's description.
"""

from __future__ import annotations

SOURCE = "Kalajdzievski 2024, arXiv 2401.05605, Table 1"

#: Table 1 of the paper, exactly as published.
TABLE1: dict[str, dict[str, float]] = {
    "openorca": {
        "a_f": 388000.0,
        "a_ft": 7000.0,
        "b_f": 23.6418,
        "b_ft": 72.9186,
        "c_ft": 0.0020,
        "c_f_ft": 1.7334,
        "s_ft": 0.6126,
        "s_f_ft": 2.0481,
        "alpha_f": 0.0351,
        "alpha_ft": 0.0424,
        "beta_f": 0.1468,
        "beta_ft": 0.1219,
        "rho": 7.6885,
    },
    "news": {
        "a_f": 11000.0,
        "a_ft": 22000.0,
        "b_f": 97.8466,
        "b_ft": 54.8678,
        "c_ft": 0.0028,
        "c_f_ft": 1.0615,
        "s_ft": 1.9253,
        "s_f_ft": 3.1285,
        "alpha_f": 0.0458,
        "alpha_ft": 0.0383,
        "beta_f": 0.1044,
        "beta_ft": 0.1161,
        "rho": 7.5996,
    },
}

#: Every preset as ``(law, name, constants, source)``; plain data, registered on import
#: of :mod:`forgetscale.laws`.
PRESETS: tuple[tuple[str, str, dict[str, float], str], ...] = tuple(
    ("kalajdzievski", name, constants, SOURCE) for name, constants in TABLE1.items()
)
