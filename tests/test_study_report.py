"""forgetscale.study.report: report.json and a self-contained report.html, checked as
files and in a real browser.

The browser test opens the report in headless Chromium (Debian's ``chromium``,
installed by scripts/install-test-services.sh; ``FORGETSCALE_CHROMIUM`` names another
binary) and asserts that the page renders: a screenshot that is not blank, every
image decoded (``naturalWidth > 0``), and no console messages or errors.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from study_data import analysed

from forgetscale.study.report import write_report

FIGURES = {"forgetting_vs_finetune", "losses_vs_steps", "predicted_vs_observed", "residuals",
           "hard_vs_soft", "frontier"}  # fmt: skip
TOP_LEVEL_KEYS = {"format", "created", "store", "study", "config", "runs", "warnings", "checks",
                  "laws", "ranking", "best", "shown_laws", "predictions", "paper", "noise_floor",
                  "hard_vs_soft", "forgotten", "downstream", "figures", "seconds", "frontier",
                  "replay_law"}  # fmt: skip


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{path} holds {name}: not strict JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def good_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    html_path, json_path = write_report(analysed("good")[2], out)
    return html_path, json_path


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    write_report(analysed("mixed")[2], out)
    return out


def _images(text: str) -> list[bytes]:
    srcs = re.findall(r'<img src="([^"]*)"', text)
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:60]
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_writes_strict_json_and_a_self_contained_page(good_report):
    from PIL import Image

    html_path, json_path = good_report
    assert (html_path.name, json_path.name) == ("report.html", "report.json")
    data = _strict_json(json_path)
    assert set(data) == TOP_LEVEL_KEYS
    assert set(data["figures"]) == FIGURES
    text = html_path.read_text()
    # nothing fetched from anywhere: no scripts, links, remote or file sources
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'(src|href)="(?!data:|#)', text)
    assert "http://" not in text and "https://" not in text
    pngs = _images(text)
    assert len(pngs) == len(FIGURES)
    for png in pngs:
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            w, h = im.size
            assert 600 <= w <= 1800 and 250 <= h <= 2000, im.size  # readable, not huge


def test_page_says_what_a_reader_needs(good_report):
    html_path, _ = good_report
    text = html_path.read_text()
    for words in (
        "Warnings",
        "What was run",
        "forgetscale study tests/good.yaml",  # the command to reproduce
        "test machine, 2 cores",
        "These runs ran on test machine, 2 cores. ",  # what moves between machines
        "Compare runs from one machine",
        "Noise floor",
        "Spread over seeds",
        "held-out runs",
        "held-out steps",
        "paper: openorca",
        "What would rank r forget",
        "Hard vs soft L_f",
        "Downstream suites",
        "report.json",
    ):
        assert words in text, words
    # the noise floor under every figure
    assert text.count("Noise floor: typical difference between seeds: L_f (hard) ") == len(FIGURES)
    # the predictions table holds the ranks not run
    section = text.split('id="predict"')[1].split('id="trust"')[0]
    assert '<td class="num">64</td>' in section and '<td class="num">128</td>' in section
    assert "Intervals: L_f (hard): 95% interval for a new run: fit uncertainty" in section


def test_the_trust_section_shows_the_coverage_report_json_holds(good_report):
    html_path, json_path = good_report
    data = _strict_json(json_path)
    section = html_path.read_text().split('id="trust"')[1].split('id="hardsoft"')[0]
    assert "Can I trust these predictions?" in section
    best = data["best"]["forgetting_loss"]["law"]
    entry = next(e for e in data["laws"]["forgetting_loss"] if e["law"] == best)
    for key, name in (("held_out_runs", "held-out runs"), ("held_out_steps", "held-out steps")):
        ev = entry[key]
        assert set(ev["coverage"]) == {"0.8", "0.95"}
        assert all(0 <= v <= 1 for v in ev["coverage"].values())
        assert name in section
        assert f'<td class="num">{100 * ev["coverage"]["0.95"]:.3g}</td>' in section
    # held-out steps reach beyond the fitted N, held-out runs beyond the fitted P
    assert entry["held_out_steps"]["extrapolation"]["step"] > 1
    assert entry["held_out_runs"]["extrapolation"]["params_trained"] > 1
    assert entry["held_out_runs"]["extrapolation"]["step"] == 1


def test_on_bound_fits_are_flagged_in_words_not_results(tmp_path):
    _, _, rep = analysed("degenerate")
    html_path, json_path = write_report(rep, tmp_path)
    text = html_path.read_text()
    top = text.split('id="summary"')[0]  # the warnings come first
    assert "ended on a bound" in top and "not a result" in top
    assert "no law in P and N identified" in text
    assert "These runs cannot identify it; the values below are not results." in text
    assert 'class="bound"' in text
    data = _strict_json(json_path)
    assert data["predictions"]["rows"] == []


def test_study_notes_are_shown_below_the_warnings():
    import copy

    from forgetscale.study.report import render_html

    rep = copy.deepcopy(analysed("mixed")[2])
    rep.study["notes"] = ["--quick: 3 ranks, so no held-out rank can be tested."]
    text = render_html(rep, images={})
    top = text.split('id="summary"')[0]
    assert "About this study" in top and "no held-out rank can be tested" in top


def test_failed_runs_hard_vs_soft_and_downstream_in_the_page(mixed_report):
    text = (mixed_report / "report.html").read_text()
    assert "diverged" in text and "out of memory" in text
    assert "not negative forgetting" in text
    assert "arc-easy" in text


def test_rewrites_in_place_and_leaves_no_temporary_files(mixed_report):
    first = (mixed_report / "report.json").read_text()
    write_report(analysed("mixed")[2], mixed_report)
    assert (mixed_report / "report.json").read_text() == first
    assert sorted(p.name for p in mixed_report.iterdir()) == ["report.html", "report.json"]


def test_refuses_a_folder_that_is_a_file(tmp_path):
    from forgetscale.errors import UserError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create the report folder"):
        write_report(analysed("mixed")[2], blocker / "out")


# ---------------------------------------------------------------------------- browser


def chromium() -> str | None:
    env = os.environ.get("FORGETSCALE_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


#: Records what the page did, into the DOM, for --dump-dom to carry out: every image's
#: naturalWidth once loaded, and every error event or console.error call.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || ('could not load ' + (e.target && e.target.tagName))));
}, true);
(function () { var ce = console.error; console.error = function () {
  window.__errors.push(Array.prototype.join.call(arguments, ' ')); return ce.apply(console, arguments);
}; })();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {images: imgs.length, naturalWidth: imgs.map(function (i) { return i.naturalWidth; }),
             errors: window.__errors, height: document.documentElement.scrollHeight};
  var pre = document.createElement('pre'); pre.id = '__probe';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions"]  # fmt: skip


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    binary = chromium()
    assert binary is not None
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _probe(page: Path, tmp_path: Path) -> dict:
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    res = _chromium(["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                    tmp_path / "profile-probe")  # fmt: skip
    m = re.search(r'<pre id="__probe">([^<]*)</pre>', res.stdout)
    assert m, f"the probe did not report (exit {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.mark.skipif(
    chromium() is None,
    reason="chromium is not installed (scripts/install-test-services.sh installs it)",
)
def test_report_renders_in_a_real_browser(good_report, tmp_path):
    import numpy as np
    from PIL import Image

    html_path, json_path = good_report
    n_figures = len(_strict_json(json_path)["figures"])

    # the page as it is: no console message at all (it has no script, so any is an error)
    res = _chromium(
        ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
         html_path.as_uri()], tmp_path / "profile-page",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "What would rank r forget" in res.stdout
    assert _console_lines(res.stderr) == []

    # every image decoded, no error event, no console.error
    probe = _probe(html_path, tmp_path)
    assert probe["images"] == n_figures
    assert all(w > 0 for w in probe["naturalWidth"]), probe
    assert probe["errors"] == []

    # a screenshot of the top of the page is not blank
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1280,2400", html_path.as_uri()],
                    tmp_path / "profile-shot")  # fmt: skip
    assert shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.shape == (2400, 1280)
    ink = (grey < 200).mean()
    assert ink > 0.01, f"screenshot nearly blank ({ink:.4f} of pixels dark)"
    assert grey.std() > 10
    # the first figure is on screen and drawn: many distinct colours somewhere below the top
    assert len(np.unique(grey[600:].round())) > 50


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed")
def test_the_browser_check_catches_a_broken_image(good_report, tmp_path):
    html_path, _ = good_report
    broken = tmp_path / "broken.html"
    broken.write_text(
        html_path.read_text().replace("</main>", '<img src="data:image/png;base64,AAAA"></main>')
    )
    probe = _probe(broken, tmp_path)
    assert probe["naturalWidth"][-1] == 0
    assert probe["errors"]


@pytest.mark.parametrize("design", ["three ranks", "nothing finished"])
def test_thin_designs_still_make_a_report(tmp_path, design):
    from study_data import make_store

    from forgetscale.study.analysis import AnalysisConfig, analyse

    path = tmp_path / "s.db"
    if design == "three ranks":
        make_store(path, ranks=(1, 2, 4), steps=(1, 4, 16, 64))
    else:
        make_store(path, ranks=(1, 2), steps=(1, 4), statuses={1: "failed", 2: "diverged"})
    config = AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["linear", "multiplicative"]})
    rep = analyse(path, config)
    html_path, json_path = write_report(rep, tmp_path / "out")
    data = _strict_json(json_path)
    text = html_path.read_text()
    assert len(_images(text)) == len(data["figures"])
    if design == "three ranks":
        assert "Too few runs to test a held-out rank" in text
        assert data["figures"]["predicted_vs_observed"]["data"]["forgetting_loss"][
            "schemes"
        ].keys() == {"held_out_steps"}
    else:
        assert data["figures"] == {} and "No run has finished" in text


def test_one_figure_path_and_one_section_list(good_report):
    """The report and `fit --plots` draw from one figure registry; the page's navigation, its
    headings and its body come from one list of sections."""
    from forgetscale.figures import FIGURES as REGISTRY
    from forgetscale.laws.plots import FIGURES as FIT_FIGURES
    from forgetscale.study.figure_data import DATA
    from forgetscale.study.report import SECTIONS

    assert set(DATA) <= set(REGISTRY) and set(FIT_FIGURES) <= set(REGISTRY)
    assert set(FIGURES) <= set(DATA)
    html_path, _ = good_report
    text = html_path.read_text()
    nav = text.split("<nav>")[1].split("</nav>")[0]
    anchors = [s.anchor for s in SECTIONS if s.anchor]
    assert len(set(anchors)) == len(anchors)
    # the sections this study has (the frontier: its ranks are arms; no replay law: no replay)
    report = analysed("good")[2]
    anchors = [s.anchor for s in SECTIONS if s.anchor and s.shown(report)]
    assert "frontier" in anchors and "replaylaw" not in anchors and "replaylaw" not in text
    assert re.findall(r'href="#([a-z]+)"', nav) == anchors  # the navigation, in page order
    positions = [text.index(f'<h2 id="{a}">') for a in anchors]  # one heading each, in order
    assert positions == sorted(positions)
    assert all(text.count(f'id="{a}"') == 1 for a in anchors)
