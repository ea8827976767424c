"""Helpers shared by the training tests: the shipped minimal config and tiny-model configs."""

from __future__ import annotations

from pathlib import Path

from forgetscale.config import build_config

# the minimal config as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


def tiny_config(workdir: Path, **overrides):
    """The minimal config (quiet, a small forgetting budget) with ``overrides``."""
    import yaml

    values = yaml.safe_load(MINIMAL)
    values.update(progress=False, forgetting_max_tokens=1024)
    values.update(overrides)
    return build_config(values, base_dir=workdir)


def tiny_causal_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def one_line_error(
    capsys, argv, match: str = "", *, command: str | None = None, quiet=False, after_status=False
) -> str:
    """Expect a command-line refusal: exit code 2, one line on stderr containing ``match``,
    no traceback; returns that line.

    ``argv``: the arguments to run ``forgetscale`` with (argparse's own exits count), or the
    exit code of a call already made. ``command``: the line starts ``forgetscale COMMAND:
    error:``. ``quiet``: nothing on stdout either. ``after_status``: status lines may come
    before the error, which is then the last line.
    """
    from forgetscale.cli import main

    if isinstance(argv, int):
        code = argv
    else:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own checks (types, choices) exit 2 themselves
            code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    if not after_status:
        assert len(lines) == 1, err
    line = lines[-1]
    if command is not None:
        assert line.startswith(f"forgetscale {command}: error:"), line
    if quiet:
        assert captured.out == "", captured.out
    assert match in line, err
    return line
