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
