"""The command line's own behaviour: usage errors are one line too."""

from __future__ import annotations

import pytest

from forgetscale.cli import main


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["reference", "--out", "x", "--top-k", "zero"], "argument --top-k: must be a positive"),
        (["measure", "--reference", "r", "--dtype", "float8"], "argument --dtype: invalid choice"),
        (["runs", "--from", "r.db", "--status", "done"], "argument --status: invalid choice"),
        (["export"], "the following arguments are required: --from"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert match in err and err.rstrip().endswith("--help)"), err


def test_numeric_option_types():
    import argparse

    from forgetscale.commands._common import finite_float, int_at_least, nonneg_int, positive_int

    assert positive_int("3") == 3 and nonneg_int("0") == 0 and int_at_least(2)(" 2 ") == 2
    unit = finite_float(0, 1, high_open=True)
    assert unit("0") == 0.0 and unit("0.5") == 0.5
    for parse, text in [(positive_int, "0"), (nonneg_int, "-1"), (positive_int, "1.0"),
                        (unit, "1"), (unit, "-0.1"), (unit, "nan"), (unit, "inf"),
                        (finite_float(), "-inf"), (finite_float(), "x")]:  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            parse(text)
    assert finite_float()("-1e300") == -1e300
