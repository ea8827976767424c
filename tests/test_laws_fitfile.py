"""A saved fit, hand-edited or broken, given to `forgetscale predict`: one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetscale.cli import main
from forgetscale.errors import UserError
from forgetscale.laws import fit_law, load_fit
from forgetscale.laws.fitting import is_fit_file
from forgetscale.laws.synthetic import synthetic_runs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)
    path = tmp_path_factory.mktemp("fit") / "fit.json"
    fit_law(df, "multiplicative", n_boot=4, workers=1, holdout="largest-P").save(path)
    return json.loads(path.read_text())


def _edit(d, change):
    d = json.loads(json.dumps(d))
    change(d)
    return d


def _cases(saved):
    def drop(key):
        return lambda d: d.pop(key)

    def put(key, value):
        return lambda d: d.__setitem__(key, value)

    def param(name, value):
        return lambda d: d["params"].__setitem__(name, value)

    return {
        "missing params": (_edit(saved, drop("params")), "params is missing"),
        "missing law": (_edit(saved, drop("law")), "law is missing"),
        "params not a dict": (_edit(saved, put("params", [1, 2])), "params must be a dict"),
        "a parameter missing": (_edit(saved, lambda d: d["params"].pop("beta")), "lacks beta"),
        "an unknown parameter": (_edit(saved, param("gamma", 1.0)), "has unknown gamma"),
        "a string parameter": (
            _edit(saved, param("alpha", "0.3")),
            "params.alpha must be a number",
        ),
        "a null parameter": (_edit(saved, param("alpha", None)), "params.alpha must be a number"),
        "a bool parameter": (_edit(saved, param("alpha", True)), "params.alpha must be a number"),
        "out of range": (_edit(saved, param("alpha", -0.3)), "params.alpha = -0.3 lies outside"),
        "unknown law": (_edit(saved, put("law", "chinchilla")), "unknown law 'chinchilla'"),
        "bad targets": (_edit(saved, put("targets", ["nope"])), "targets must be distinct"),
        "targets not a list": (_edit(saved, put("targets", "kl")), "targets must be a list"),
        "bad ci": (_edit(saved, lambda d: d["ci"].__setitem__("alpha", [1])), "ci.alpha must be"),
        "ragged bootstrap": (
            _edit(saved, lambda d: d["bootstrap"].__setitem__(0, [1.0])),
            "bootstrap[0] must be a list of 4 numbers",
        ),
        "text in bootstrap": (
            _edit(saved, lambda d: d["bootstrap"][1].__setitem__(0, "x")),
            "bootstrap[1] must be a number",
        ),
        "not a fit": ({"hello": 1}, "is not a forgetscale fit"),
        "a list": ([1, 2, 3], "is not a forgetscale fit"),
    }


def test_each_malformed_fit_gives_one_line_and_exit_2(saved, tmp_path, capsys):
    for case, (content, needle) in _cases(saved).items():
        path = tmp_path / "fit.json"
        path.write_text(json.dumps(content))
        rc = main(["predict", "--law", str(path), "--params", "3e7", "--steps", "100"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, case
        assert len(err) == 1 and needle in err[0], (case, err)
        assert err[0].startswith("forgetscale predict: error:"), case


@pytest.mark.parametrize(
    "content,needle",
    [
        (b'{"format": "forgetscale-fit/1", "law": ', "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b'{"format": "forgetscale-fit/1", "params": {"E": NaN}}', "law is missing"),
        (bytes(range(256)) * 4, "is not a text file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a text file"),
    ],
)
def test_files_that_are_not_fits(tmp_path, capsys, content, needle):
    path = tmp_path / "fit.json"
    path.write_bytes(content)
    assert main(["predict", "--law", str(path), "--params", "3e7", "--steps", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_nan_parameter_is_refused(saved, tmp_path, capsys):
    path = tmp_path / "fit.json"
    text = json.dumps(saved).replace(
        '"alpha": ' + json.dumps(saved["params"]["alpha"]), '"alpha": NaN'
    )
    path.write_text(text)
    assert main(["predict", "--law", str(path), "--params", "3e7", "--steps", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "params.alpha must be finite, got nan" in err[0], err


def test_a_folder_and_a_missing_file(tmp_path, capsys):
    assert main(["predict", "--law", str(tmp_path), "--params", "3e7", "--steps", "100"]) == 2
    assert "is a folder" in capsys.readouterr().err
    missing = tmp_path / "nope.json"
    assert main(["predict", "--law", str(missing), "--params", "3e7", "--steps", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No such file" in err[0]


def test_saved_fit_is_strict_json_and_round_trips_nan(tmp_path, saved):
    orig = tmp_path / "orig.json"
    orig.write_text(json.dumps(saved))
    fit = load_fit(orig)
    fit.objective = float("nan")
    fit.bootstrap[0, 0] = np.nan  # a failed bootstrap refit
    path = tmp_path / "nan.json"
    fit.save(path)
    d = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert d["objective"] is None and d["bootstrap"][0][0] is None
    back = load_fit(path)
    assert np.isnan(back.objective) and np.isnan(back.bootstrap[0, 0])
    assert is_fit_file(path) and not is_fit_file(tmp_path)


def test_save_replaces_only_a_fit(tmp_path, saved):
    orig = tmp_path / "orig.json"
    orig.write_text(json.dumps(saved))
    fit = load_fit(orig)
    fit.save(orig)  # an earlier fit may be replaced
    table = tmp_path / "runs.csv"
    table.write_text("run_id,step\n")
    with pytest.raises(UserError, match="runs.csv exists and is not a forgetscale fit"):
        fit.save(table)
    assert table.read_text() == "run_id,step\n"
