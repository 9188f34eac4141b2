"""The web app in a real browser: `pem app` on 127.0.0.1, driven by headless Chromium (Debian's chromium and
chromium-driver, which `make test` installs) through Selenium: upload an image, segment it, and find the overlay,
the table of segments (the app's own computation, checked against the segmenter called directly) and the
prototype view. With PEM_APP_SCREENSHOT=1 the screenshot goes to docs/app.png; PEM_APP_MODEL and PEM_APP_IMAGE replace
the tiny model and random image (the README's screenshot is of the `make demo` checkpoint on a validation image)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from transformers_pem.app.web import Segmenter

# A real browser: run by `make test`, left out by `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(confident_checkpoint):
    return confident_checkpoint(shortest_edge=96)[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_server(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the app exited: {server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer at {url} within {seconds} s")


def chromium() -> webdriver.Chrome:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "Debian's chromium and chromium-driver are needed (make test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    arguments = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"]
    # No traffic beyond this machine: no background services, and no host but 127.0.0.1 resolves.
    arguments += ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
    arguments += ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
    for argument in arguments:
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_app_in_a_real_browser(checkpoint, tmp_path):
    checkpoint = Path(os.environ.get("PEM_APP_MODEL", checkpoint))
    image_path = Path(os.environ.get("PEM_APP_IMAGE", tmp_path / "street.png"))
    if "PEM_APP_IMAGE" not in os.environ:
        PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)).save(image_path)
    image = PIL.Image.open(image_path).convert("RGB")
    expected_rows = Segmenter(checkpoint)(image, "panoptic")[1]
    assert expected_rows  # the tiny model finds segments

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "transformers_pem.cli",
            "app",
            f"--model={checkpoint}",
            f"--port={port}",
            f"--max-pixels={image.width * image.height}",
        ],  # fmt: skip
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    driver = None
    try:
        wait_for_server(url, server)
        driver = chromium()
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#pem-input input[type=file]"))
        )
        upload.send_keys(str(image_path))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#pem-input img")))
        driver.find_element(By.ID, "pem-run").click()
        overlay = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#pem-overlay img")))
        wait.until(
            lambda _: len(driver.find_elements(By.CSS_SELECTOR, "#pem-segments tbody tr")) == len(expected_rows)
        )
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#pem-prototypes img")))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#pem-labels a")))
        assert overlay.get_attribute("src")
        rows = driver.find_elements(By.CSS_SELECTOR, "#pem-segments tbody tr")
        shown = [
            [cell.get_attribute("textContent").strip() for cell in row.find_elements(By.CSS_SELECTOR, "td")]
            for row in rows
        ]
        assert [row[0] for row in shown] == [row[0] for row in expected_rows]
        assert [int(row[2]) for row in shown] == [row[2] for row in expected_rows]
        assert [float(row[1]) for row in shown] == [row[1] for row in expected_rows]
        screenshot = tmp_path / "app.png"
        driver.save_screenshot(str(screenshot))
        assert PIL.Image.open(screenshot).size[0] >= 1000
        if os.environ.get("PEM_APP_SCREENSHOT"):
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copy(screenshot, ROOT / "docs" / "app.png")
        # An upload above --max-pixels gets the app's message, not a generic error.
        large = tmp_path / "large.png"
        PIL.Image.new("RGB", (image.width + 1, image.height)).save(large)
        driver.find_element(By.CSS_SELECTOR, "#pem-input input[type=file]").send_keys(str(large))
        time.sleep(2)
        driver.find_element(By.ID, "pem-run").click()
        wait.until(lambda _: "this app takes up to" in driver.page_source)
        # A file that is not an image: gradio's reader refuses it, and says so.
        (tmp_path / "notes.png").write_text("not an image")
        driver.find_element(By.CSS_SELECTOR, "#pem-input input[type=file]").send_keys(str(tmp_path / "notes.png"))
        time.sleep(2)
        driver.find_element(By.ID, "pem-run").click()
        wait.until(lambda _: "cannot identify image file" in driver.page_source)
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def test_segmenter_reads_paths_as_viewers_show_them_and_bounds_its_work(checkpoint, tmp_path):
    photo = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    PIL.Image.fromarray(photo).save(tmp_path / "photo.png", exif=exif)
    segmenter = Segmenter(checkpoint, max_pixels=90 * 60)
    overlay, rows, label_png, prototypes = segmenter(tmp_path / "photo.png", "panoptic")
    upright = PIL.Image.fromarray(np.ascontiguousarray(np.rot90(photo, k=-1)))
    expected = segmenter(upright, "panoptic")
    assert rows == expected[1] and np.array_equal(np.asarray(overlay), np.asarray(expected[0]))
    assert PIL.Image.open(label_png).size == (60, 90)  # the upright image's size
    PIL.Image.new("RGB", (91, 60)).save(tmp_path / "large.png")
    with pytest.raises(ValueError, match=r"91x60 \(0.0 megapixels\): this app takes up to"):
        segmenter(tmp_path / "large.png", "panoptic")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        segmenter(tmp_path / "notes.png", "panoptic")
    with pytest.raises(ValueError, match="Upload an image first"):
        segmenter(None, "panoptic")
    # A 3-pixel-wide strip: the prototype panels stay at most twice as tall as wide (not 256 x 170000 each).
    tall = Segmenter(checkpoint)
    strip = PIL.Image.fromarray(np.random.default_rng(2).integers(0, 256, (2000, 3, 3), dtype=np.uint8))
    panels = tall(strip, "semantic")[3]
    assert panels is not None and panels.height <= 4 * (512 + 22)  # at most 4 queries of 512-pixel panels
    # The label PNGs stay in the segmenter's one folder, removed with it.
    folder = Path(label_png).parent
    assert sorted(path.name for path in folder.iterdir()) == ["panoptic.png"]
    del segmenter
    import gc

    gc.collect()
    assert not folder.exists()
