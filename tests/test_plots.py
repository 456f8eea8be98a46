"""`dvc plots show` and `dvc plots diff` draw offline: the project's HTML template
(``plots.html_template`` in .dvc/config -> plots_template/index.html) inlines vega,
vega-lite and vega-embed, where DVC's own page loads them from a CDN.

The browser tests run DVC on a small git + DVC repository holding this project's dvc.yaml,
.dvc/config, plots_template/ and committed metrics/ (two commits, the second with changed
curves and predictions), and open the page it writes in headless Chromium with the network
off: every declared plot must have drawn (a canvas with ink, or its images loaded).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from dvc_render.vega import VegaRenderer

from tests.browser import launch, needs_chromium
from tests.conftest import ROOT
from tests.dvc_project import dvc, git, init_repo

TEMPLATE = ROOT / "plots_template" / "index.html"
BANNER = re.compile(
    r"<script>/\* ([\w-]+)@([\d.]+) (\S+) sha256 ([0-9a-f]{64}); LICENSE: (\S+) \*/"
)
MIN_INK = 1000  # pixels not white or transparent: axes and a title alone come to more

# What each declared plot's element on the page holds: a vega plot's canvas pixels that
# are neither transparent nor near white, or whether each image loaded.
DRAWN = """() => Array.from(document.querySelectorAll('body > div[id]')).map(div => {
  const canvas = div.querySelector('canvas');
  let ink = 0;
  if (canvas && canvas.width && canvas.height) {
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 0 && (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250)) ink++;
    }
  }
  const images = Array.from(div.querySelectorAll('img'));
  return {id: div.id, ink, images: images.map(i => i.complete && i.naturalWidth > 0)};
})"""


def test_template_inlines_the_versions_dvc_loads_with_their_licences():
    page = TEMPLATE.read_text(encoding="utf-8")
    cdn = dict(re.findall(r"cdn\.jsdelivr\.net/npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    banners = BANNER.findall(page)
    assert {name: version for name, version, *_ in banners} == cdn
    assert [name for name, *_ in banners] == ["vega", "vega-lite", "vega-embed"]  # load order
    for name, _, _, _, licence in banners:
        text = (TEMPLATE.parent / licence).read_text(encoding="utf-8")
        assert licence == f"{name}.LICENSE" and "Copyright" in text
    # {plot_divs} is where DVC puts the plots; {scripts} would bring its CDN tags back.
    assert "{plot_divs}" in page and "{scripts}" not in page
    assert not re.search(r"""<script[^>]+src=|https?://[^\s"'<>]*\.js\b""", page)
    config = (ROOT / ".dvc" / "config").read_text(encoding="utf-8")
    (setting,) = re.findall(r"^\s*html_template\s*=\s*(\S+)\s*$", config, re.MULTILINE)
    assert (ROOT / ".dvc" / setting).resolve() == TEMPLATE  # DVC reads it relative to .dvc/
    assert "dvc_plots/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's dvc.yaml, .dvc/config, template and metrics/, committed twice."""
    repo = tmp_path_factory.mktemp("plots") / "project"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    for folder in ("metrics", "plots_template"):
        shutil.copytree(ROOT / folder, repo / folder)
    init_repo(repo)
    dvc("init", "-q", cwd=repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    # A second run: other curves, and a prediction that changed class.
    for name in ("loss", "accuracy"):
        for side in ("train", "eval"):
            path = repo / f"metrics/train/plots/metrics/{side}/{name}.tsv"
            curve = pd.read_csv(path, sep="\t")
            curve[name] = curve[name] * 0.9
            curve.to_csv(path, sep="\t", index=False)
    predictions = repo / "metrics/predictions.csv"
    table = pd.read_csv(predictions, keep_default_na=False)
    table.loc[0, "predicted"] = next(
        c for c in table["actual"].unique() if c != table.loc[0, "predicted"]
    )
    table.to_csv(predictions, index=False)
    git("commit", "-q", "-am", "second", cwd=repo)
    return repo


def declared(repo: Path, *command: str) -> dict[str, list[dict]]:
    """The plots DVC declares for the command, by id (``--json``, written aside)."""
    out = dvc(*command, "--json", "-o", str(repo.parent / "json"), cwd=repo, stdout_only=True)
    return json.loads(out)["data"]


def drawn_offline(page_file: Path) -> tuple[list[dict], list[str]]:
    """What each plot on the page drew, in Chromium with the network off; and every URL the
    page asked for that is not a local file."""
    from playwright.sync_api import sync_playwright

    asked: list[str] = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_context(offline=True).new_page()
            page.on("request", lambda request: asked.append(request.url))
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            # vegaEmbed renders asynchronously: wait until every plot has its canvas.
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('body > div[id]'))"
                ".filter(d => d.querySelector('script')).every(d => d.querySelector('canvas'))",
                timeout=15_000,
            )
            return page.evaluate(DRAWN), [url for url in asked if not url.startswith("file:")]
        finally:
            browser.close()


def check_every_plot_drew(repo: Path, command: list[str], revisions: int) -> None:
    expected = declared(repo, *command)
    output = dvc(*command, cwd=repo)
    page_file = repo / "dvc_plots" / "index.html"
    assert page_file.as_uri() in output, output
    try:
        plots, asked = drawn_offline(page_file)
    except Exception as exc:  # a plot that never drew: say which, not only the timeout
        raise AssertionError(f"{page_file}: plots did not draw offline: {exc}") from exc
    assert asked == []  # nothing fetched, nothing even tried
    vega = [k for k, v in expected.items() if v[0]["type"] == "vega"]
    images = [k for k, v in expected.items() if v[0]["type"] == "image"]
    assert len(vega) == 9 and len(images) == 2, expected.keys()  # as in dvc.yaml
    assert all(len(expected[k][0]["revisions"]) == revisions for k in vega)
    assert len(plots) == len(expected)
    for plot in plots:
        if plot["images"]:
            assert plot["images"] == [True] * revisions, plot
        else:
            assert plot["ink"] > MIN_INK, plot


@needs_chromium
def test_plots_show_draws_every_plot_offline(repo):
    check_every_plot_drew(repo, ["plots", "show"], revisions=1)


@needs_chromium
def test_plots_diff_draws_every_plot_offline(repo):
    check_every_plot_drew(repo, ["plots", "diff", "HEAD~1"], revisions=2)
