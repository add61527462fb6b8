"""`mat-fast serve`'s page in a real browser: headless Chromium (Debian's package, installed
by scripts/install_browser.sh) driven through Selenium, the way a person uses it: open the
page, load the bundled sample, paint a stroke, click Fill, read back the pixels.

The server is the real command (`python -m mat_fast serve`, tiny random-weight network) on
127.0.0.1 and a free port; every wait below is bounded. A screenshot of the painted page is
saved to $MAT_FAST_TEST_ARTIFACTS (or the test's tmp dir); docs/images/serve.png is one.
"""

from __future__ import annotations

import base64
import io
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="mat-fast serve needs the app extra (pip install '.[app]')")
pytest.importorskip("uvicorn", reason="mat-fast serve needs the app extra (pip install '.[app]')")
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="the browser test needs Selenium (pip install '.[test]')"
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "mat_fast" / "assets" / "sample.png"
SAMPLE_MASK = ROOT / "mat_fast" / "assets" / "sample_mask.png"  # white = fill
CHROMIUM = os.environ.get("MAT_FAST_CHROMIUM") or shutil.which("chromium")
CHROMEDRIVER = os.environ.get("MAT_FAST_CHROMEDRIVER") or shutil.which("chromedriver")
FILL_TIMEOUT = 300  # s: a 256 px random network on a busy 2-core CPU box takes 10-60 s

pytestmark = [
    # Several real fills in a real browser (about 2 min on the 2-core box): with the slow
    # tests, which CI runs.
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="Chromium or chromedriver not found: run scripts/install_browser.sh "
        "(or set MAT_FAST_CHROMIUM and MAT_FAST_CHROMEDRIVER)",
    ),
]


@pytest.fixture(scope="module")
def server_url():
    """The real `mat-fast serve` on 127.0.0.1, a free port; stopped after the tests."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "mat_fast", "serve", "--random-weights"]
    command += ["--random-resolution", "256", "--device", "cpu", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        command + ["--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, seen = None, []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1.0):
                line = process.stdout.readline()
                seen.append(line)
                found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
                url = found and found.group(1)
    try:
        assert url, f"mat-fast serve printed no URL within 120 s: {''.join(seen)[-2000:]}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
        process.stdout.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)  # no sandbox: CI runs as root in a container
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("MAT_FAST_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _blob_png(driver, expression: str) -> np.ndarray:
    """A PNG blob the page holds (``expression`` gives a Promise of it), as an array."""
    script = """
        const done = arguments[arguments.length - 1];
        Promise.resolve(%s)
          .then((blob) => new Promise((resolve, reject) => {
            const reader = new FileReader();
            reader.onload = () => resolve(reader.result);
            reader.onerror = () => reject(reader.error);
            reader.readAsDataURL(blob);
          }))
          .then(done, (err) => done("error: " + err));
    """
    data_url = driver.execute_async_script(script % expression)
    assert data_url.startswith("data:image/png;base64,"), data_url[:200]
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)))


def _wait(driver, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        condition, message=f"{what} (waited {timeout} s)"
    )


def test_paint_fill_and_read_back_in_chromium(server_url, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(server_url)
    message = driver.find_element(By.ID, "message")
    badge = driver.find_element(By.ID, "weights")
    _wait(driver, lambda d: badge.is_displayed(), 30, "the page did not load /api/info")
    assert "random weights" in badge.text

    driver.find_element(By.ID, "sample").click()
    _wait(driver, lambda d: "sample.png" in d.find_element(By.ID, "dims").text, 30, "no sample")
    canvas = driver.find_element(By.ID, "mask")
    rect = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    height, width = np.asarray(Image.open(SAMPLE)).shape[:2]
    to_screen = rect["width"] / width  # CSS pixels per image pixel

    # A bigger brush with "]" (40 -> 121 px), then one stroke down over the sample's tower
    # (image x ~290-370, y ~200-400), offsets from the canvas centre as Selenium takes them.
    page = driver.find_element(By.TAG_NAME, "body")
    for _ in range(6):
        page.send_keys("]")
    assert driver.find_element(By.ID, "size-value").text == "121"
    x, top, bottom = 330, 245, 355  # image pixels; the 121 px brush reaches ~60 px beyond
    actions = ActionChains(driver, duration=50)
    point = [(x - width / 2) * to_screen, (top - height / 2) * to_screen]
    actions.move_to_element_with_offset(canvas, int(point[0]), int(point[1])).click_and_hold()
    for step in range(1, 11):
        y = top + (bottom - top) * step / 10
        actions.move_to_element_with_offset(
            canvas, int(point[0]), int((y - height / 2) * to_screen)
        )
    actions.release().perform()
    undo, redo = driver.find_element(By.ID, "undo"), driver.find_element(By.ID, "redo")
    assert undo.is_enabled() and not redo.is_enabled(), "the stroke did not register"
    # Ctrl+Z takes it back, Ctrl+Shift+Z brings it again.
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    assert not undo.is_enabled() and redo.is_enabled()
    shortcut = ActionChains(driver).key_down(Keys.CONTROL).key_down(Keys.SHIFT).send_keys("z")
    shortcut.key_up(Keys.SHIFT).key_up(Keys.CONTROL).perform()
    assert undo.is_enabled() and not redo.is_enabled()
    artifacts = _artifacts(tmp_path)
    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    driver.save_screenshot(str(artifacts / "serve-painted.png"))

    driver.find_element(By.ID, "fill").click()
    _wait(
        driver,
        lambda d: message.get_attribute("class") in ("ok", "error", "notice"),
        FILL_TIMEOUT,
        "no fill result",
    )
    assert message.get_attribute("class") == "ok", message.text
    assert "seed 240" in message.text  # the seed field's default, shown with the result
    driver.save_screenshot(str(artifacts / "serve-filled.png"))

    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    mask = _blob_png(driver, "window.matFast.maskBlob()")
    result = _blob_png(driver, "window.matFast.resultBlob()")
    assert mask.shape[:2] == result.shape[:2] == original.shape[:2]
    hole = mask[..., :3].max(axis=2) > 0
    # The mask lies where the stroke was painted, in image coordinates ...
    for y in (top, (top + bottom) // 2, bottom):
        assert hole[y, x] and hole[y, x - 50] and hole[y, x + 50], (
            f"no mask under the stroke at y={y}"
        )
    assert not hole[:100].any() and not hole[:, :250].any() and not hole[:, 410:].any()
    # ... the result is the original bit for bit outside it, and new inside it.
    assert np.array_equal(result[~hole], original[~hole])
    changed = (result[hole] != original[hole]).any(axis=1).mean()
    assert changed > 0.9, f"only {changed:.0%} of the stroke's pixels changed"

    # Before/After switches what the picture shows: the stroke's middle changes with it.
    def shown_pixel():
        return driver.execute_script(
            """const c = document.getElementById("photo");
               const [x, y] = [Math.round(c.width * arguments[0]), Math.round(c.height * arguments[1])];
               return Array.from(c.getContext("2d").getImageData(x, y, 1, 1).data);""",
            x / width,
            (top + bottom) / 2 / height,
        )

    after = shown_pixel()
    driver.find_element(By.ID, "view-before").click()
    before = shown_pixel()
    driver.find_element(By.ID, "view-after").click()
    assert shown_pixel() == after != before

    # "Another": a new seed, shown in the seed field and the message, and a new fill.
    driver.find_element(By.ID, "another").click()
    _wait(driver, lambda d: message.get_attribute("class") != "ok", 30, "Another did not start")
    _wait(
        driver,
        lambda d: message.get_attribute("class") in ("ok", "error", "notice"),
        FILL_TIMEOUT,
        "no second fill",
    )
    assert message.get_attribute("class") == "ok", message.text
    seed = driver.find_element(By.ID, "seed").get_attribute("value")
    assert seed != "240" and f"seed {seed}" in message.text
    second = _blob_png(driver, "window.matFast.resultBlob()")
    assert np.array_equal(second[~hole], original[~hole])
    assert not np.array_equal(second[hole], result[hole])

    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"the page logged errors: {errors}"


def test_open_by_picker_drop_and_paste_mask_file_clear_and_undo(server_url, browser):
    """No fill here (no model run): open through the file picker, load a mask file, clear
    it (Fill then says there is nothing to fill), undo the clear; then open by drop and by
    paste."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    driver.get(server_url)
    message = driver.find_element(By.ID, "message")
    driver.find_element(By.ID, "file").send_keys(str(SAMPLE))
    _wait(driver, lambda d: "sample.png" in d.find_element(By.ID, "dims").text, 30, "no image")
    driver.find_element(By.ID, "mask-file").send_keys(str(SAMPLE_MASK))
    _wait(driver, lambda d: "Loaded sample_mask.png" in message.text, 30, "no mask loaded")

    expected = np.asarray(Image.open(SAMPLE_MASK)) > 0
    painted = _blob_png(driver, "window.matFast.maskBlob()")[..., :3].max(axis=2) > 0
    assert np.array_equal(painted, expected)  # what would be sent: the file's fill region

    driver.find_element(By.ID, "clear").click()
    driver.find_element(By.ID, "fill").click()
    assert message.get_attribute("class") == "notice" and "mask is empty" in message.text
    assert not (_blob_png(driver, "window.matFast.maskBlob()")[..., :3] > 0).any()
    ActionChains(driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    painted = _blob_png(driver, "window.matFast.maskBlob()")[..., :3].max(axis=2) > 0
    assert np.array_equal(painted, expected)

    # Drop and paste: the events a browser fires for them, carrying a file made in the page.
    dims = driver.find_element(By.ID, "dims")
    for event, name in (("drop", "dropped.png"), ("paste", "pasted.png")):
        driver.execute_async_script(
            """const [event, done] = [arguments[0], arguments[arguments.length - 1]];
               fetch("/sample.png").then((r) => r.blob()).then((blob) => {
                 const data = new DataTransfer();
                 data.items.add(new File([blob], "dropped.png", { type: "image/png" }));
                 const init = { bubbles: true, cancelable: true };
                 const target = event === "drop" ? document.getElementById("stage") : document;
                 target.dispatchEvent(event === "drop"
                   ? new DragEvent("drop", { ...init, dataTransfer: data })
                   : new ClipboardEvent("paste", { ...init, clipboardData: data }));
                 done();
               });""",
            event,
        )
        _wait(driver, lambda d, n=name: dims.text.startswith(n), 30, f"nothing opened by {event}")
        assert not driver.find_element(By.ID, "undo").is_enabled()  # a new image: a new mask

    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"the page logged errors: {errors}"


def test_a_12_megapixel_photo_is_painted_on_screen_and_masked_at_full_size(
    server_url, browser, tmp_path
):
    """The mask is painted on a screen-sized canvas and rendered at the photo's full size
    only when sent: a stroke lands at the right place in a 4000x3000 mask."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    width, height = 4000, 3000
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    photo = np.stack([np.tile(ramp, (height, 1))] * 3, axis=2).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(photo).save(path, quality=90)

    driver = browser
    driver.get(server_url)
    driver.find_element(By.ID, "file").send_keys(str(path))
    _wait(driver, lambda d: "4000×3000" in d.find_element(By.ID, "dims").text, 60, "no photo")
    canvas = driver.find_element(By.ID, "mask")
    rect = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
    assert rect["width"] < 1280  # painted at screen size, not at 4000 px
    to_screen = rect["width"] / width
    y, x0, x1 = 1500, 1000, 3000  # a horizontal stroke through the middle, image pixels
    actions = ActionChains(driver, duration=20)
    actions.move_to_element_with_offset(canvas, int((x0 - width / 2) * to_screen), 0)
    actions.click_and_hold()
    for step in range(1, 41):
        x = x0 + (x1 - x0) * step / 40
        actions.move_to_element_with_offset(canvas, int((x - width / 2) * to_screen), 0)
    actions.release().perform()

    mask = _blob_png(driver, "window.matFast.maskBlob()")
    assert mask.shape[:2] == (height, width)
    hole = mask[..., :3].max(axis=2) > 0
    radius = 20 / to_screen  # the default 40 px brush, in image pixels
    for x in (x0, 2000, x1):
        assert hole[y, x] and hole[int(y + 0.8 * radius), x], f"stroke missing at x={x}"
    assert not hole[: int(y - 1.3 * radius)].any() and not hole[int(y + 1.3 * radius) :].any()
    assert not hole[:, : int(x0 - 1.3 * radius)].any()
