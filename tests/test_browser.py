"""The student's path in a real browser: JupyterLab 4 over a fresh release of notebook 06, in headless Chromium.

JupyterLab starts on a loopback port (a random token, a private ``$HOME``) in a fresh
``release/06_gae/`` folder; Chromium opens the notebook and runs every cell through the *Run* menu.
The first graded cell must show ``NotImplementedError`` (the student has not written anything yet),
and notebook 03's labeling widget (``helpers.labeling.label_rankings``, in a one-cell notebook beside
it) must render as a widget, not as its text fallback. Screenshots land in the test's tmp folder
(``browser_06_gae.png``, ``browser_labeling_widget.png``; the path is printed).

Skipped, saying why, when ``chromium``/``chromedriver`` or ``selenium`` is missing: pip cannot fetch
a browser here, so ``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from autograder import grading
from helpers.notebook import cell_kind, nbgrader_meta

ROOT = Path(__file__).resolve().parent.parent
NB = "06_gae"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000"]

SELENIUM = importlib.util.find_spec("selenium") is not None

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and SELENIUM),
    reason="needs chromium, chromedriver and selenium: `apt-get install chromium chromium-driver` "
           "(.ci/run does) and `pip install -r requirements-test.txt`",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the page is still loading, a request is refused ...
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last})" if last else ""))


@pytest.fixture
def jupyterlab(tmp_path):
    """A fresh release of notebook 06 served by JupyterLab on 127.0.0.1: (base url, token, folder)."""
    crs = grading.prepare_course(tmp_path / "course", [NB])
    folder = tmp_path / "release" / NB
    shutil.copytree(crs / "release" / NB, folder)
    (folder / "labeling_widget.ipynb").write_text(json.dumps(widget_notebook()), encoding="utf-8")
    home = tmp_path / "home"
    (home / ".jupyter" / "labconfig").mkdir(parents=True)
    (home / ".jupyter" / "labconfig" / "page_config.json").write_text(json.dumps(  # no "Jupyter news?" toast
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}), encoding="utf-8")
    port, token = free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NBGRADER_", "JUPYTER_", "PYTEST_"))}
    env.update(HOME=str(home), PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
               MPLBACKEND="module://matplotlib_inline.backend_inline", COURSE_NO_PROGRESS="1",
               RLHF_COURSE_CACHE=str(home / "cache"))
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--ServerApp.port_retries=0", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200,
                 90, "JupyterLab to answer")
        yield base, token, folder
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def widget_notebook() -> dict:
    """One cell: the labeling UI of notebook 03 on a made-up prompt."""
    source = ("from helpers import labeling\n"
              "UI = labeling.label_rankings([{'prompt': 'What is 2 + 2?', 'responses': ['4', 'four', '5']}],\n"
              "                             'human_rankings.jsonl', labeler='me')\n")
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
            "cells": [{"cell_type": "code", "id": "labeling", "metadata": {}, "source": source, "outputs": [],
                       "execution_count": None}]}


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER,
                                                               log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def run_all_cells(driver) -> None:
    """JupyterLab's Run menu > Run All Cells, once the notebook's kernel is ready."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"{VISIBLE} .jp-Cell"), 120, "the notebook's cells")
    wait_for(lambda: any("idle" in (i.get_attribute("data-status") or "") for i in
                         driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator")),
             120, "the kernel to be idle")
    menu = wait_for(lambda: [m for m in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
                             if m.text.strip() == "Run"], 30, "the Run menu")
    menu[0].click()
    item = wait_for(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-item")
                             if i.get_attribute("data-command") == "runmenu:run-all" or i.text.startswith("Run All Cells")],
                    30, "Run > Run All Cells")
    item[0].click()


VISIBLE = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook in the active tab


def cell_outputs(driver, index: int) -> str:
    """The text of the outputs of cell ``index`` of the visible notebook ("" while it has none)."""
    from selenium.webdriver.common.by import By

    cells = driver.find_elements(By.CSS_SELECTOR, f"{VISIBLE} .jp-Cell")
    if index >= len(cells):
        return ""
    return " ".join(o.text for o in cells[index].find_elements(By.CSS_SELECTOR, ".jp-OutputArea"))


def test_release_in_jupyterlab(jupyterlab, browser, tmp_path):
    base, token, folder = jupyterlab
    nb = json.loads((folder / f"{NB}.ipynb").read_text(encoding="utf-8"))
    first_test = next(i for i, c in enumerate(nb["cells"]) if cell_kind(c) == "test")
    assert nbgrader_meta(nb["cells"][first_test])["grade_id"] == "test_masked_mean"

    browser.get(f"{base}/lab/tree/{NB}.ipynb?token={token}")
    run_all_cells(browser)
    text = wait_for(lambda: "NotImplementedError" in cell_outputs(browser, first_test) and
                    cell_outputs(browser, first_test), 180, "NotImplementedError in the first graded cell")
    assert "Traceback" in text or "NotImplementedError" in text
    from selenium.webdriver.common.by import By

    cell = browser.find_elements(By.CSS_SELECTOR, f"{VISIBLE} .jp-Cell")[first_test]
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", cell)
    time.sleep(0.5)
    shot = tmp_path / "browser_06_gae.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    browser.get(f"{base}/lab/tree/labeling_widget.ipynb?token={token}")
    run_all_cells(browser)
    button = wait_for(lambda: [b for b in browser.find_elements(By.CSS_SELECTOR, f"{VISIBLE} .jupyter-widgets button")
                               if "Submit ranking" in b.text], 120, "the labeling widget's Submit button")
    assert button[0].is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, f"{VISIBLE} .widget-dropdown select")) == 3
    page = cell_outputs(browser, 0)
    assert "labeling UI skipped" not in page and "What is 2 + 2?" in page, page[-500:]
    widget_shot = tmp_path / "browser_labeling_widget.png"
    browser.save_screenshot(str(widget_shot))
    print(f"screenshots: {shot} {widget_shot}")
