"""The attention explorer against a live kernel, inside a real JupyterLab, in headless chromium: the
test starts JupyterLab on 127.0.0.1 (a free port, a token, no browser of its own), opens a notebook
that shows the explorer with the test fixtures' demo models, runs it from JupyterLab's Run menu, moves
the token slider and changes the method, and checks that the displayed image changes each time. It
leaves a screenshot in build/screenshots/explorer.png. `make screenshot` runs it on the report's models
instead (HW3_EXPLORER_ASSETS, HW3_EXPLORER_RUN, HW3_EXPLORER_IMAGES) and copies that one to
docs/explorer.png, the README's."""

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import nbformat
import pytest

from .conftest import ROOT, headless_chrome

pytestmark = pytest.mark.browser

NOTEBOOK = """\
from hw3lib.models.loading import encoder_transform, load_tokenizer
from hw3lib.attention.maps import capture
from hw3lib.core.images import list_images
from hw3lib.captioning.runs import load_run, manifest_for
from hw3lib.attention.viewer import AttentionExplorer

m = manifest_for({assets!r})
model = load_run({run!r}, m, "cpu")
captures = capture(model, load_tokenizer(m), encoder_transform(model.encoder), list_images({images!r})[:2],
                   max_len={max_len})
AttentionExplorer(model, captures)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        try:
            value = fn()
            if value:
                return value
        except Exception:  # the page is still building: try again
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with its own config, data and runtime folders; stopped after."""
    root = tmp_path / "lab"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = {"JUPYTER_CONFIG_DIR": tmp_path / "cfg", "JUPYTER_RUNTIME_DIR": tmp_path / "run",
           "JUPYTERLAB_SETTINGS_DIR": tmp_path / "settings", "JUPYTERLAB_WORKSPACES_DIR": tmp_path / "ws"}
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no toast over the explorer
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             *(["--allow-root"] if os.geteuid() == 0 else [])],
                            env=os.environ | {k: str(v) for k, v in env.items()}, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200, 60,
                 "the JupyterLab server")
        yield root, url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def explorer_inputs(request) -> tuple[str, str, str]:
    """(assets, run, images): the report's when HW3_EXPLORER_* name them (make screenshot), else the fixtures'."""
    if os.environ.get("HW3_EXPLORER_RUN"):
        return os.environ["HW3_EXPLORER_ASSETS"], os.environ["HW3_EXPLORER_RUN"], os.environ["HW3_EXPLORER_IMAGES"]
    world = request.getfixturevalue("small_world")
    return (str(request.getfixturevalue("small_models")), str(request.getfixturevalue("small_run")),
            str(world / "p3_data" / "images"))


def test_attention_explorer_in_jupyterlab(lab, request, tmp_path):
    root, url, token = lab
    assets, run, images = explorer_inputs(request)
    nb = nbformat.v4.new_notebook()
    max_len = 40 if os.environ.get("HW3_EXPLORER_RUN") else 12  # whole captions of the report's models
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK.format(assets=assets, run=run, images=images, max_len=max_len))]
    nb.metadata["kernelspec"] = {"name": "hw3lib", "display_name": "Python (hw3lib)", "language": "python"}
    nbformat.write(nb, root / "explorer.ipynb")
    drv = headless_chrome(tmp_path / "profile")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def css(selector):
        return drv.find_elements(By.CSS_SELECTOR, selector)

    def click_text(selector, text):
        el = next(e for e in css(selector) if e.text.strip() == text)
        el.click()
        return True

    try:
        drv.get(f"{url}/lab/tree/explorer.ipynb?token={token}")
        wait_for(lambda: css(".jp-Notebook .jp-Cell") and css(".jp-Notebook-ExecutionIndicator, .jp-KernelStatus"),
                 60, "the notebook")
        time.sleep(1)
        for button in css(".jp-Dialog .jp-mod-accept"):  # a "Select Kernel" dialog, when Lab shows one
            button.click()
        wait_for(lambda: click_text(".lm-MenuBar-itemLabel", "Run"), 30, "the Run menu")
        wait_for(lambda: click_text(".lm-Menu-itemLabel", "Run All Cells"), 10, "Run All Cells")
        frame = wait_for(lambda: css("img.hw3-frame"), 90, "the explorer's image")[0]
        src = wait_for(lambda: frame.get_attribute("src"), 10, "a first frame")

        handle = css(".hw3-token .noUi-handle")[0]  # the token slider, moved one step as a user would
        handle.click()
        handle.send_keys(Keys.ARROW_RIGHT)
        src2 = wait_for(lambda: (s := frame.get_attribute("src")) != src and s, 20, "the slider to change the image")
        assert "2/" in css(".hw3-caption + div")[0].text or "token 2/" in drv.page_source

        click_text(".hw3-method button", "rollout")
        wait_for(lambda: (s := frame.get_attribute("src")) != src2 and s, 30, "the method to change the image")
        (ROOT / "build" / "screenshots").mkdir(parents=True, exist_ok=True)
        drv.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox").screenshot(
            str(ROOT / "build" / "screenshots" / "explorer.png"))
    except Exception:
        drv.save_screenshot(str(tmp_path / "failure.png"))
        print("lab log:", (tmp_path / "lab.log").read_text()[-3000:])
        raise
    finally:
        drv.quit()
