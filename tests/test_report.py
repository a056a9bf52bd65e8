"""``llc report`` pages: written without JAX, small enough, and working in a real headless browser.

The browser tests drive Debian's chromium through chromedriver (selenium). They skip where no
browser is installed, except when ``LLC_REQUIRE_BROWSER`` is set (CI sets it): then they fail.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from synthetic_runs import (hmc_stats, make_idata, mclmc_stats, write_calibration, write_run, write_sweep,
                            write_trajectory)
from typer.testing import CliRunner

from llc.cli import app
from llc.posthoc import report as R

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = Path(os.environ.get("LLC_REPORT_SCREENSHOTS", "")) if os.environ.get("LLC_REPORT_SCREENSHOTS") else None
MAX_PAGE_BYTES = 5_000_000


# --------------------------------------------------------------------------- fixtures

def _said(output: str, text: str) -> bool:
    """``text`` in a console's output, whatever its line wrapping (Rich wraps long paths)."""
    return "".join(text.split()) in "".join(output.split())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-sampler run with long traces (the page must downsample them) and a flag on one sampler."""
    rng = np.random.default_rng(5)
    idatas = {"sgld": make_idata("sgld", rng, 4, 3000, rho=0.6),
              "hmc": make_idata("hmc", rng, 4, 1500, rho=0.1, stats=hmc_stats(rng, 4, 1500)),
              "mclmc": make_idata("mclmc", rng, 4, 3000, rho=0.4, stats=mclmc_stats(rng, 4, 3000))}
    run = write_run(tmp_path_factory.mktemp("run") / "runA", idatas)
    doc = json.loads((run / "metrics.json").read_text())
    doc["samplers"]["sgld"]["flags"] = ["llc_above_half_dim"]  # the store's failure checks write these
    (run / "metrics.json").write_text(json.dumps(doc))
    (run / "manifest.json").write_text(json.dumps({"run_id": "runA", "created": "2025-02-01T10:00:00+0000",
                                                   "jax_backend": "cpu", "code_fingerprint": "abc123",
                                                   "versions": {"jax": "0.4.35", "llc": "0.1.0"}}))
    return run


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("sweep"), n_runs=41)


@pytest.fixture(scope="module")
def cal_dir(tmp_path_factory):
    """A real calibration (SGLD on the d = 4 quadratic, 12 points, ~10 s), its page written by --report."""
    root = tmp_path_factory.mktemp("cal")
    res = CliRunner().invoke(app, ["calibrate", "--target", "quadratic", "--quad-dim", "4", "--artifacts", str(root),
                                   "--report"])
    assert res.exit_code == 0, res.output
    (cal,) = (root / "calibrations").iterdir()
    assert _said(res.output, f"report: {cal / R.PAGE_FILE}")
    return cal


@pytest.fixture(scope="module")
def traj_root(tmp_path_factory):
    """Three synthetic trajectories (written by llc's own assembler) that differ in weight decay; the
    middle one has a flagged checkpoint."""
    root = tmp_path_factory.mktemp("traj")
    for wd, name in ((0.3, "traj_wd03"), (1.0, "traj_wd1"), (3.0, "traj_wd3")):
        write_trajectory(root / "trajectories" / name, weight_decay=wd, flagged=(9,) if wd == 1.0 else ())
    return root


# --------------------------------------------------------------------------- without a browser

def test_kinds_and_errors(run_dir, sweep_csv, tmp_path):
    assert R.detect(run_dir) == "run"
    assert R.detect(sweep_csv) == "sweep"
    assert R.detect(sweep_csv.parent / "artifacts") == "index"
    assert set(R.PAGE_KINDS) == {"run", "sweep", "index", "calibration", "trajectory"}
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no such file or directory" in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no runs" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    res = CliRunner().invoke(app, ["report", str(bad)])
    assert res.exit_code == 2 and "not a sweep results CSV" in res.output


def test_run_page_content_and_size(run_dir, tmp_path):
    out, kind = R.write_report(run_dir, tmp_path / "run.html")
    text = out.read_text()
    assert kind == "run" and out.stat().st_size < MAX_PAGE_BYTES
    assert text.count("Plotly.newPlot(") == 1 + 3 + 2  # combined, one per sampler, HMC and MCLMC diagnostics
    assert "llc_above_half_dim" in text and "abc123" in text and "0.4.35" in text
    import re

    assert "Traces downsampled for display" in text  # 3000 draws of 4 chains do not fit the budget
    assert re.search(r"Shown for display: running λ̂: 1 in \d+ of 3000 draws; L_n trace: 1 in \d+ of 3000 draws", text)
    ours = text.split("</script></head>", 1)[1]  # the page after the inlined library
    assert "<script src" not in text and not any(tag in ours for tag in ('src="http', 'href="http'))


def test_page_size_bounded_for_many_long_chains(tmp_path):
    rng = np.random.default_rng(0)
    idatas = {s: make_idata(s, rng, 8, 5000, rho=0.3) for s in ("sgld", "hmc", "mclmc", "mclmc_adjusted", "vi")}
    out, _ = R.write_report(write_run(tmp_path / "big", idatas))
    assert out.stat().st_size < MAX_PAGE_BYTES


def test_report_never_imports_jax(run_dir, traj_root, tmp_path):
    cal = write_calibration(tmp_path / "cal")
    pages = [(run_dir, tmp_path / "p.html"), (cal, tmp_path / "c.html"),
             (traj_root / "trajectories" / "traj_wd1", tmp_path / "t.html"), (traj_root, tmp_path / "i.html")]
    code = ("import sys; from llc.cli import app\n"
            + "".join(f"app(['report', {str(src)!r}, '--out', {str(out)!r}], standalone_mode=False)\n"
                      for src, out in pages)
            + "print('JAX_LOADED' if 'jax' in sys.modules or 'jaxlib' in sys.modules else 'NO_JAX')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert "NO_JAX" in res.stdout and all(out.is_file() for _, out in pages)


def test_sweep_page_links_each_run(sweep_csv):
    R.write_report(sweep_csv.parent / "artifacts" / "sweep003run")  # one run with a page of its own
    out, kind = R.write_report(sweep_csv)
    text = out.read_text()
    assert kind == "sweep" and out == sweep_csv.with_suffix(".html") and out.stat().st_size < MAX_PAGE_BYTES
    assert 'href="artifacts/sweep003run/report.html"' in text  # its page
    assert 'href="artifacts/sweep004run/"' in text  # no page yet: its folder


def test_calibration_and_trajectory_kinds(cal_dir, traj_root, tmp_path):
    trajs = traj_root / "trajectories"
    assert R.detect(cal_dir) == "calibration"  # it also has a manifest.json and a .nc, like a run
    assert R.detect(trajs / "traj_wd1") == "trajectory" and R.detect(trajs) == "trajectory"
    assert R.detect(traj_root) == "index"
    overlay = tmp_path / "overlay_x"  # llc trajectory --axis: a summary listing its members
    overlay.mkdir()
    (overlay / "summary.json").write_text(json.dumps({"axes": {"training.weight_decay": [0.3, 3.0]}, "members": [
        {"setting": {"training.weight_decay": 0.3}, "artifacts": str(trajs / "traj_wd03")},
        {"setting": {"training.weight_decay": 3.0}, "artifacts": str(trajs / "traj_wd3")},
        {"setting": {"training.weight_decay": 9.0}, "artifacts": str(tmp_path / "gone")}]}))
    assert R.detect(overlay) == "trajectory"
    out, _ = R.write_report(overlay)
    text = out.read_text()
    assert "weight_decay=0.3" in text and "weight_decay=3" in text and "Members not found" in text
    assert out.stat().st_size < MAX_PAGE_BYTES


def test_trajectory_labels_name_what_differs(traj_root, tmp_path):
    from llc.posthoc import report_trajectory as RT

    members, missing = RT.members_of(traj_root / "trajectories")
    assert not missing and [d.name for d, _, _ in members] == ["traj_wd03", "traj_wd1", "traj_wd3"]
    names, fields = RT.labels(members)
    assert names == ["weight_decay=0.3", "weight_decay=1", "weight_decay=3"] and fields == ["training.weight_decay"]
    bare = [(d, {k: v for k, v in doc.items() if k != "config"}, None) for d, doc, _ in members]
    assert RT.labels(bare)[0] == ["traj_wd03", "traj_wd1", "traj_wd3"]  # no configs: their ids
    # A folder's trajectories come in the order of the setting that tells them apart, not of their names.
    import shutil as sh

    for src, name in (("traj_wd3", "a"), ("traj_wd03", "b"), ("traj_wd1", "c")):
        sh.copytree(traj_root / "trajectories" / src, tmp_path / "mixed" / name)
    members, _ = RT.members_of(tmp_path / "mixed")
    assert [d.name for d, _, _ in members] == ["b", "c", "a"]
    # An overlay summary naming its members by id, beside it in trajectories/.
    (traj_root / "trajectories" / "overlay_ids").mkdir(exist_ok=True)
    (traj_root / "trajectories" / "overlay_ids" / "summary.json").write_text(
        json.dumps({"overlay": ["traj_wd1", "traj_wd3"]}))
    members, missing = RT.members_of(traj_root / "trajectories" / "overlay_ids")
    assert [d.name for d, _, _ in members] == ["traj_wd1", "traj_wd3"] and not missing


def test_many_trajectories_overlaid_stay_under_5mb(traj_root, tmp_path):
    import shutil as sh

    src = traj_root / "trajectories" / "traj_wd1"
    doc = json.loads((src / "summary.json").read_text())
    doc["rows"] = [dict(r, step=r["step"] * 10 + k) for r in doc["rows"] for k in range(3)]  # 45 checkpoints
    for i in range(14):
        d = tmp_path / "trajectories" / f"traj_{i:02d}"
        sh.copytree(src, d)
        doc["config"]["training"]["weight_decay"] = 0.1 * (i + 1)
        (d / "summary.json").write_text(json.dumps(doc))
    out, _ = R.write_report(tmp_path / "trajectories")
    text = out.read_text()
    assert out.stat().st_size < MAX_PAGE_BYTES
    assert "their table is on each trajectory" in text and 'id="members"' in text and 'id="checkpoints"' not in text


def test_calibration_page_variants(tmp_path):
    none = R.write_report(write_calibration(tmp_path / "none", recommend=False))[0].read_text()
    assert "No recommendation" in none and "no point on the line" in none and 'class="recommended"' not in none
    hmc = R.write_report(write_calibration(tmp_path / "hmc", reference="hmc"))[0].read_text()
    assert "hmc reference" in hmc and "Recommended setting" in hmc and "1.46" in hmc
    beta = R.write_report(write_calibration(tmp_path / "beta", step_axis=False))[0]
    assert "λ̂ against beta0" in beta.read_text() and beta.stat().st_size < MAX_PAGE_BYTES


def test_index_lists_calibrations_and_trajectories(cal_dir, traj_root, tmp_path):
    import shutil as sh

    root = traj_root
    sh.copytree(cal_dir, root / "calibrations" / cal_dir.name, dirs_exist_ok=True)
    R.write_report(root / "trajectories" / "traj_wd1")
    text = R.write_report(root)[0].read_text()
    assert 'id="calibrations"' in text and 'id="trajectories"' in text
    assert f'href="calibrations/{cal_dir.name}/report.html"' in text  # its page (copied with it)
    assert 'href="trajectories/traj_wd1/report.html"' in text and 'href="trajectories/traj_wd3/"' in text
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty_root")])
    assert res.exit_code == 2


# --------------------------------------------------------------------------- in a browser

def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not (chromium and driver):
        if os.environ.get("LLC_REQUIRE_BROWSER"):
            pytest.fail("LLC_REQUIRE_BROWSER is set but chromium, chromedriver or selenium is missing "
                        "(apt-get install chromium chromium-driver; pip install selenium)")
        pytest.skip("no headless browser (chromium + chromedriver + selenium)")
    return chromium, driver


def _start_browser():
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--host-resolver-rules=MAP * ~NOTFOUND"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
    driver.get("data:text/html,<p>warm</p>")  # the browser process is up before anything is timed
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = _start_browser()
    yield driver
    driver.quit()


def _cold_load_seconds(page: Path, attempts: int = 3) -> float:
    """Seconds to load and draw a page in a browser that has never seen Plotly's script (no code
    cache); the best of ``attempts`` fresh browsers, so that a moment of contention on a shared
    machine is not taken for the page's cost."""
    times = []
    for _ in range(attempts):
        driver = _start_browser()
        try:
            times.append(_open(driver, page))
        finally:
            driver.quit()
        if times[-1] < 2.0:
            break
    return min(times)


def _open(driver, page: Path) -> float:
    """Load a page from file:// and wait until every Plotly figure is drawn; seconds taken."""
    driver.get_log("browser")
    driver.get_log("performance")
    t0 = time.perf_counter()
    driver.get(page.resolve().as_uri())
    expected = driver.execute_script("return document.querySelectorAll('.plotly-graph-div').length")
    if expected == 0:  # a page without figures: loaded is ready
        return time.perf_counter() - t0
    deadline = time.time() + 30
    while driver.execute_script("return document.querySelectorAll('.plotly-graph-div .main-svg').length") < expected:
        assert time.time() < deadline, "plots never rendered"
        time.sleep(0.01)
    return time.perf_counter() - t0


def _check_clean(driver) -> None:
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    assert urls and all(u.startswith("file://") for u in urls), urls  # the page alone; nothing fetched


def _screenshot_not_blank(driver, name: str) -> None:
    from PIL import Image

    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(height + 40, 6000))
    try:
        png = driver.get_screenshot_as_png()
    finally:
        driver.set_window_size(1400, 1000)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"{name}: screenshot is blank (pixel std {pixels.std():.1f})"
    # Not one flat colour anywhere large: the plots' regions hold lines, not empty frames.
    assert len(np.unique(pixels[: min(pixels.shape[0], 2500)])) > 50
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / f"report_{name}.png").write_bytes(png)


def _rows(driver, table_id: str, visible: bool = False) -> int:
    rows = driver.find_elements("css selector", f"#{table_id} tbody tr")
    return sum(r.is_displayed() for r in rows) if visible else len(rows)


def test_run_page_in_browser(browser, run_dir):
    out, _ = R.write_report(run_dir)
    _open(browser, out)
    _check_clean(browser)
    assert _rows(browser, "estimates") == 3
    plots = browser.find_elements("css selector", ".sampler-plot .plotly-graph-div")
    assert len(plots) == 3  # one plot per sampler
    assert len(browser.find_elements("css selector", ".diagnostics-plot .plotly-graph-div")) == 2  # HMC, MCLMC
    assert "llc_above_half_dim" in browser.find_element("id", "estimates").text
    # Chain toggles: hiding chain 0 in the legend hides it in every panel of that sampler.
    legend_item = browser.find_elements("css selector", "#plot-sampler-sgld .legend .traces")[0]
    legend_item.find_element("css selector", ".legendtoggle").click()
    script = ("return document.getElementById('plot-sampler-sgld').data"
              ".filter(t => t.legendgroup === 'c0').map(t => t.visible)")
    deadline = time.time() + 5  # Plotly waits out the double-click delay before a single click acts
    while not all(v == "legendonly" for v in browser.execute_script(script)) and time.time() < deadline:
        time.sleep(0.05)
    hidden = browser.execute_script(script)
    assert len(hidden) >= 4 and all(v == "legendonly" for v in hidden)
    _screenshot_not_blank(browser, "run")


def test_sweep_page_in_browser_opens_fast(browser, sweep_csv):
    out, _ = R.write_report(sweep_csv)
    seconds = _cold_load_seconds(out, attempts=3)
    if seconds >= 2.0:
        # Parsing Plotly's 4.8 MB library is most of a cold load; on a saturated machine it alone
        # can take ~2 s. Then hold the page to what it adds to the library's own cost.
        from plotly.offline import get_plotlyjs

        bare = out.with_name("plotly_only.html")
        bare.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"><script>'
                        f'{get_plotlyjs()}</script></head><body></body></html>')
        library = _cold_load_seconds(bare, attempts=3)
        assert library >= 1.5 and seconds - library < 0.5, \
            f"41-run sweep page took {seconds:.2f} s to load and draw (Plotly's library alone: {library:.2f} s)"
    _open(browser, out)
    _check_clean(browser)
    n_rows = len(sweep_csv.read_text().strip().splitlines()) - 1
    assert _rows(browser, "rows") == n_rows == 82
    assert len(browser.find_elements("css selector", ".sweep-plot .plotly-graph-div")) == 1
    # Filtering and sorting happen in the page.
    box = browser.find_element("css selector", ".controls[data-for=rows] .filter-status")
    from selenium.webdriver.support.ui import Select

    Select(box).select_by_value("failed")
    assert _rows(browser, "rows", visible=True) == 2
    Select(box).select_by_value("")
    header = [h for h in browser.find_elements("css selector", "#rows thead th") if h.text == "λ̂"][0]
    header.click()
    column = [h.text for h in browser.find_elements("css selector", "#rows thead th")].index("λ̂")
    values = browser.execute_script(
        f"return Array.from(document.querySelectorAll('#rows tbody tr')).map(r => r.cells[{column}].dataset.sort)")
    numbers = [float(v) for v in values if v not in (None, "")]
    assert numbers == sorted(numbers) and len(numbers) == 80
    _screenshot_not_blank(browser, "sweep")


def test_index_page_in_browser(browser, sweep_csv):
    root = sweep_csv.parent / "artifacts"
    out, kind = R.write_report(root)
    assert kind == "index" and out.stat().st_size < MAX_PAGE_BYTES
    _open(browser, out)
    _check_clean(browser)
    runs = [d for d in root.iterdir() if (d / "manifest.json").is_file()]
    assert _rows(browser, "runs") == len(runs) == 40
    assert _rows(browser, "sweeps") == 1
    created = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).map(r => parseFloat(r.cells[1].dataset.sort))")
    assert created == sorted(created, reverse=True)  # newest first
    visible = "return document.getElementById('plot-overlay').data.map(t => t.visible)"
    before = browser.execute_script(visible)
    assert before.count(True) == 6  # the newest 3 runs, 2 samplers each
    browser.find_elements("css selector", "input.overlay-pick")[5].click()  # add a sixth run
    assert browser.execute_script(visible).count(True) == 8
    _screenshot_not_blank(browser, "index")


def test_calibration_page_in_browser(browser, cal_dir):
    page = cal_dir / R.PAGE_FILE  # written by llc calibrate --report
    summary = json.loads((cal_dir / "summary.json").read_text())
    assert page.stat().st_size < MAX_PAGE_BYTES
    _open(browser, page)
    _check_clean(browser)
    why = browser.find_element("id", "recommendation-why")
    assert why.is_displayed() and why.text == summary["recommended"]["why"]
    assert _rows(browser, "points") == len(summary["rows"]) == 12  # one row per grid point: 4 auto steps x 3 gammas
    for cls in ("grid-plot", "diagnostics-plot", "traces-plot"):
        assert len(browser.find_elements("css selector", f".{cls} .plotly-graph-div")) == 1, cls
        assert browser.find_elements("css selector", f".{cls} .plotly-graph-div .main-svg"), cls
    names = browser.execute_script("return document.getElementById('plot-grid').data.map(t => t.name)")
    assert {"gamma=50", "gamma=100 (the rule's line)", "gamma=200"} <= set(names)
    if summary["recommended"]["index"] is not None:
        assert "recommended" in names and _rows_matching(browser, "#points tbody tr.recommended") == 1
    unhealthy = sum(not r["healthy"] for r in summary["rows"])
    assert _rows_matching(browser, "#points tbody tr.unhealthy") == unhealthy
    if unhealthy:
        assert "unhealthy (flag, R̂ or acceptance)" in names
    _screenshot_not_blank(browser, "calibration")


def _rows_matching(driver, selector: str) -> int:
    return len(driver.find_elements("css selector", selector))


def test_trajectory_page_in_browser(browser, traj_root):
    from selenium.webdriver.common.action_chains import ActionChains

    out, kind = R.write_report(traj_root / "trajectories" / "traj_wd1")
    assert kind == "trajectory" and out.stat().st_size < MAX_PAGE_BYTES
    _open(browser, out)
    _check_clean(browser)
    assert _rows(browser, "checkpoints") == 15  # one row per checkpoint
    assert "lambda-hat" in browser.find_element("id", "checkpoints").text  # the flagged checkpoint's badge
    for cls in ("training-plot", "curvature-plot"):
        assert len(browser.find_elements("css selector", f".{cls} .plotly-graph-div")) == 1, cls
        assert browser.find_elements("css selector", f".{cls} .plotly-graph-div .main-svg"), cls
    names = browser.execute_script("return document.getElementById('plot-training').data.map(t => t.name)")
    assert {"λ̂ (sgld)", "train accuracy", "test accuracy", "train loss", "test loss", "flagged checkpoint"} <= set(names)
    # Hovering a checkpoint reads every panel there: λ̂, accuracy and loss, under the step.
    plot = browser.find_element("id", "plot-training")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", plot)
    drag = browser.find_element("css selector", "#plot-training .nsewdrag[data-subplot='xy']")
    ActionChains(browser).move_to_element_with_offset(drag, int(0.25 * drag.size["width"]), 0).perform()
    deadline = time.time() + 5
    hover = ""
    while "test accuracy" not in hover and time.time() < deadline:
        time.sleep(0.1)
        hover = browser.execute_script("return document.querySelector('#plot-training .hoverlayer').textContent")
    assert "step" in hover and "λ̂" in hover and "test accuracy" in hover and "train loss" in hover, hover
    browser.execute_script("Plotly.Fx.unhover(arguments[0]); window.scrollTo(0, 0)", plot)  # the page, unhovered
    _screenshot_not_blank(browser, "trajectory")


def test_trajectory_overlay_in_browser(browser, traj_root):
    out, kind = R.write_report(traj_root / "trajectories")
    assert kind == "trajectory" and out.stat().st_size < MAX_PAGE_BYTES
    _open(browser, out)
    _check_clean(browser)
    assert _rows(browser, "members") == 3 and _rows(browser, "checkpoints") == 45
    names = browser.execute_script("return document.getElementById('plot-training').data.map(t => t.name)")
    assert {"weight_decay=0.3", "weight_decay=1", "weight_decay=3"} <= set(names)
    _screenshot_not_blank(browser, "trajectory_overlay")


def test_calibrate_and_trajectory_print_the_report_command(cal_dir, traj_root, tmp_path, monkeypatch):
    # Without --report: the command that writes the page (here a cached calibration).
    res = CliRunner().invoke(app, ["calibrate", "--target", "quadratic", "--quad-dim", "4",
                                   "--artifacts", str(cal_dir.parent.parent)])
    assert res.exit_code == 0, res.output
    assert _said(res.output, f"report page: llc report {cal_dir}")
    # llc trajectory, its computation replaced by a finished trajectory's summary.
    from llc.pipeline import trajectory as T

    done = traj_root / "trajectories" / "traj_wd3"
    summary = json.loads((done / "summary.json").read_text())
    monkeypatch.setattr(T, "run_trajectory", lambda *a, **k: summary)
    (done / R.PAGE_FILE).unlink(missing_ok=True)
    res = CliRunner().invoke(app, ["trajectory", "--preset", "grok-tiny", "--artifacts", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert _said(res.output, f"report page: llc report {done}") and not (done / R.PAGE_FILE).exists()
    res = CliRunner().invoke(app, ["trajectory", "--preset", "grok-tiny", "--artifacts", str(tmp_path), "--report"])
    assert res.exit_code == 0, res.output
    assert _said(res.output, f"report: {done / R.PAGE_FILE}") and (done / R.PAGE_FILE).is_file()


# Issue 24 item 4: long flag texts widened the index table until flags, seconds and open were off-screen
# at 1400 px, and the run page cut a flag's text at the table's edge.
LONG_FLAGS = ["unconverged: R̂ = 1.124 > 1.05, bulk ESS = 24 < 100: chains disagree (longer warm-up or a smaller "
              "step) and too few effective draws to trust the SE (run more draws)",
              "localizer: γ, not the loss, sets λ̂: Var/λ̂ = 0.03 < 0.1 and γ·E[θ²] = 0.9 > 0.25 (lower γ, or more than "
              "this many draws to tell)"]


def _overflow(driver, selector: str) -> list[str]:
    """Elements matching ``selector`` whose content is wider than they are (cut or scrolled), and
    the table columns whose right edge lies beyond the window."""
    return driver.execute_script("""
        const out = [];
        for (const el of document.querySelectorAll(arguments[0])) {
          if (el.scrollWidth > el.clientWidth + 1) out.push('overflow: ' + (el.id || el.className));
          for (const th of el.querySelectorAll('thead th'))
            if (th.getBoundingClientRect().right > window.innerWidth + 1) out.push('off-screen: ' + th.textContent);
        }
        for (const td of document.querySelectorAll('td.flags'))
          if (td.scrollWidth > td.clientWidth + 1) out.push('flag cut: ' + td.textContent.slice(0, 40));
        return out;""", selector)


def test_long_flags_wrap_and_every_column_stays_on_screen(browser, tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "artifacts"
    for i in range(3):
        run = write_run(root / f"run{i}", {"sgld": make_idata("sgld", rng, 2, 200, rho=0.3),
                                           "hmc": make_idata("hmc", rng, 2, 200, rho=0.1, stats=hmc_stats(rng, 2, 200))})
        doc = json.loads((run / "metrics.json").read_text())
        doc["samplers"]["sgld"]["flags"] = LONG_FLAGS
        doc["samplers"]["hmc"]["flags"] = LONG_FLAGS[:1]
        (run / "metrics.json").write_text(json.dumps(doc))
    assert browser.execute_script("return window.innerWidth") <= 1400
    index, _ = R.write_report(root)
    _open(browser, index)
    _check_clean(browser)
    assert _overflow(browser, "#runs") == [] and _overflow(browser, ".table-wrap") == []
    text = browser.find_element("id", "runs").text
    assert "more draws" in text.replace("\n", " ")  # the whole flag is shown, not only its hover title
    page, _ = R.write_report(root / "run0")
    _open(browser, page)
    assert _overflow(browser, ".table-wrap") == []  # before: "…more tha" cut at the table's edge
    assert "(run more draws)" in browser.find_element("id", "estimates").text.replace("\n", " ")
