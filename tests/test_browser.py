"""A real browser on the interactive path: JupyterLab serves a workbook notebook, headless Chromium
opens it, runs every cell through the UI (Run > Run All Cells), and the test asserts that no cell
raised, that the figures rendered as images, and that the notebook wrote its metrics. A screenshot
is kept under $LTC_ARTIFACTS (or the test's tmp dir).

Kept fast: notebook 00 with 10 images per group (a ~1 minute capture on two CPU cores)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_explore_benchmark.ipynb"
PARAMS = {"n_per_group": 10, "show_per_group": 3, "batch_size": 40}
RUN_TIMEOUT = float(os.environ.get("LTC_BROWSER_TIMEOUT", "600"))

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(workspace: Path) -> Path:
    """The notebook with small parameters in a cell after its parameters cell (as papermill injects
    them), its outputs going into the workspace."""
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    params = dict(PARAMS, output_dir=str(workspace / "out"))
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])) + 1
    nb.cells.insert(at, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()),
                                                  metadata={"tags": ["injected-parameters"]}))
    path = workspace / NOTEBOOK.name
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def lab(tmp_path):
    """A token-less JupyterLab on a free localhost port, serving ``tmp_path/work``; stopped after the test."""
    work = tmp_path / "work"
    work.mkdir()
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # render every cell (JupyterLab 4 otherwise virtualises the notebook and off-screen outputs leave the DOM)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))  # no pop-up over the cells
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env.pop("MPLBACKEND", None)  # the test session's Agg would keep the kernel from showing figures inline
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
         f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"JupyterLab did not start; its log:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url, work
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _kernel_idle(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=5) as r:
        sessions = json.loads(r.read())
    return bool(sessions) and all(s["kernel"]["execution_state"] == "idle" for s in sessions)


def _click_menu(driver, wait, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    wait.until(EC.element_to_be_clickable((By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='{menu}']"))).click()
    wait.until(EC.element_to_be_clickable((By.XPATH, f"//div[contains(@class, 'lm-Menu-itemLabel') and text()='{item}']"))).click()


PROMPTS_JS = """return [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent.trim());"""
IMAGES_JS = """return [...document.querySelectorAll('.jp-RenderedImage img')].map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"""
ERRORS_JS = """return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent)
               .filter(t => t.includes('Traceback (most recent call last)') || /^\\s*\\w+Error\\b/m.test(t));"""


def test_notebook_runs_through_the_jupyterlab_ui(lab, chrome, artifacts_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, work = lab
    path = _prepare(work)
    chrome.get(f"{url}/lab/tree/{path.name}")
    wait = WebDriverWait(chrome, 120)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell")))
    wait.until(lambda d: _kernel_idle(url))  # the notebook's kernel started and is ready
    _click_menu(chrome, wait, "Run", "Run All Cells")

    n_code = sum(c.cell_type == "code" for c in nbformat.read(str(path), as_version=4).cells)
    deadline = time.time() + RUN_TIMEOUT
    prompts: list[str] = []
    while time.time() < deadline:
        prompts = chrome.execute_script(PROMPTS_JS)
        errors = chrome.execute_script(ERRORS_JS)
        if errors:
            break
        if len(prompts) == n_code and all(p.startswith("[") and p.strip("[]: ").isdigit() for p in prompts):
            break
        time.sleep(2)
    time.sleep(2)  # let the last outputs paint
    chrome.execute_script("const i = document.querySelector('.jp-RenderedImage img'); if (i) i.scrollIntoView();")
    shot = artifacts_dir / "browser_00_explore_benchmark.png"
    chrome.save_screenshot(str(shot))
    errors = chrome.execute_script(ERRORS_JS)
    assert not errors, f"a cell raised in the browser (screenshot {shot}):\n" + "\n---\n".join(e[-1500:] for e in errors)
    assert len(prompts) == n_code and all(p.strip("[]: ").isdigit() for p in prompts), \
        f"not every code cell ran within {RUN_TIMEOUT:.0f} s; prompts {prompts} (screenshot {shot})"
    images = chrome.execute_script(IMAGES_JS)
    assert len(images) >= 2, f"expected the image grid and the accuracy bars as rendered figures, found {len(images)}"
    assert all(done and w > 100 and h > 100 for done, w, h in images), f"a figure did not render: {images}"
    metrics = work / "out" / "metrics" / "00_explore_benchmark.json"
    assert metrics.is_file(), "the notebook's last cell did not write its metrics"
    assert json.loads(metrics.read_text())["n_images"] == 4 * PARAMS["n_per_group"]
