"""`mat-fast serve`'s HTTP API through the ASGI test client: fills with a tiny random
network (256 px), every kind of bad input, the queue's order, and dropped requests.

The queue tests run a stand-in for the model that records which fills ran and blocks until
the test lets it go, so the order and the dropping are observed exactly; the fills
themselves are checked with the real network."""

from __future__ import annotations

import io
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="mat-fast serve needs the app extra (pip install '.[app]')")
pytest.importorskip("httpx", reason="the ASGI test client needs httpx (pip install '.[test]')")
with warnings.catch_warnings():  # Starlette 1.x deprecates httpx for its test client
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from mat_fast.inpaint import Inpainter  # noqa: E402
from mat_fast.serve.app import create_app  # noqa: E402

H, W = 72, 88  # odd-sized on purpose: padded to the network's 256 and cropped back


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def files(image: bytes, mask: bytes) -> dict:
    return {"image": ("photo.png", image, "image/png"), "mask": ("mask.png", mask, "image/png")}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def hole() -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[20:44, 30:70] = 255
    return mask


@pytest.fixture(scope="module")
def inpainter():
    return Inpainter.random(0, resolution=256, device="cpu")


@pytest.fixture(scope="module")
def client(inpainter):
    with TestClient(create_app(inpainter, weights="random")) as client:
        yield client


def test_page_and_its_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for url in ("/static/app.js", "/static/mask.js", "/static/app.css"):
        asset = client.get(url)
        assert asset.status_code == 200, url
        # offline: nothing is fetched from another host (no CDN, no web fonts)
        assert "http://" not in asset.text and "https://" not in asset.text, url
    assert "https://" not in page.text and "http://" not in page.text
    sample = client.get("/sample.png")
    assert sample.status_code == 200 and Image.open(io.BytesIO(sample.content)).size == (768, 512)


@pytest.mark.parametrize(
    "url", ["/static/../__init__.py", "/static/%2e%2e/app.py", "/etc/passwd", "/static/x.js"]
)
def test_no_request_path_reaches_the_file_system(client, url):
    response = client.get(url)
    assert response.status_code == 404 and response.json() == {"error": "Not Found"}


def test_fill_returns_a_png_with_known_pixels_untouched(client, inpainter, photo, hole):
    response = client.post("/api/fill", files=files(png(photo), png(hole)), data={"seed": "7"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "7" and "x-notice" not in response.headers
    result = decode(response.content)
    assert result.shape == photo.shape
    keep = hole == 0
    assert np.array_equal(result[keep], photo[keep])
    assert (result[~keep] != photo[~keep]).any(axis=1).mean() > 0.9
    # the same fill as the Python API with the same seed
    direct = np.asarray(inpainter(Image.fromarray(photo), Image.fromarray(hole), seed=7))
    assert np.array_equal(result, direct)


def test_jobs_endpoint_queues_polls_and_hands_the_result_out_once(client, photo, hole):
    submitted = client.post("/api/jobs", files=files(png(photo), png(hole)), data={"seed": "7"})
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["seed"] == 7 and job["state"] in ("queued", "running")
    status = job
    for _ in range(1200):  # bounded: at most ~2 minutes on a busy CPU box
        status = client.get(f"/api/jobs/{job['id']}").json()
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert status["state"] == "done", status
    result = client.get(f"/api/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["x-seed"] == "7"
    keep = hole == 0
    assert np.array_equal(decode(result.content)[keep], photo[keep])
    assert client.get(f"/api/jobs/{job['id']}/result").status_code == 404  # not kept


def test_empty_mask_returns_the_image_unchanged_and_says_so(client, photo):
    empty = np.zeros((H, W), dtype=np.uint8)
    response = client.post("/api/fill", files=files(png(photo), png(empty)))
    assert response.status_code == 200
    assert "nothing to fill" in response.headers["x-notice"]
    assert np.array_equal(decode(response.content), photo)
    job = client.post("/api/jobs", files=files(png(photo), png(empty))).json()
    assert job["state"] == "done" and "nothing to fill" in job["notice"]


@pytest.fixture(scope="module")
def strict_client(inpainter):
    """Limits small enough to hit with small test images: 0.005 MP, 20 kB uploads."""
    app = create_app(inpainter, max_megapixels=0.005, max_upload_mb=0.02)
    with TestClient(app) as client:
        yield client


def test_bad_inputs_get_a_4xx_json_error_naming_the_problem(strict_client, photo, hole):
    small, small_hole = photo[:40, :50], hole[:40, :50]
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 50), 2.0, np.float32)).save(buffer, format="TIFF")
    float_tiff = buffer.getvalue()  # readable, but its values are not in [0, 1]
    cases = [
        (
            files(b"not an image", png(small_hole)),
            {},
            415,
            "the image upload is not a readable image",
        ),
        (files(png(small), b"%PDF-1.4"), {}, 415, "the mask upload is not a readable image"),
        (files(png(photo), png(hole)), {}, 413, "over this server's limit of 0.005 megapixels"),
        (files(png(small), png(hole[:41, :50])), {}, 422, "masks must have the image's size"),
        (files(float_tiff, png(small_hole)), {}, 422, "float image must hold values in [0, 1]"),
        (files(png(small), png(small_hole)), {"mask_convention": "x"}, 422, "mask convention"),
        ({"image": ("a.png", png(small), "image/png")}, {}, 400, "the mask is missing"),
        (files(png(small), png(small_hole)), {"seed": "-1"}, 400, "seed must be a whole number"),
        (files(png(small), png(small_hole)), {"seed": "abc"}, 400, "seed must be a whole number"),
    ]
    for upload, data, status, words in cases:
        response = strict_client.post("/api/fill", files=upload, data=data)
        assert response.status_code == status, (words, response.text)
        assert words in response.json()["error"], response.json()
        assert strict_client.post("/api/jobs", files=upload, data=data).status_code == status

    noise = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)  # 15 kB
    too_big = strict_client.post("/api/fill", files=files(png(noise), png(noise)))
    assert too_big.status_code == 413 and "upload over" in too_big.json()["error"]
    not_form = strict_client.post("/api/fill", content=b"{}", headers={"content-type": "text/json"})
    assert not_form.status_code == 400 and "multipart/form-data" in not_form.json()["error"]
    other_site = strict_client.post(
        "/api/fill",
        files=files(png(small), png(small_hole)),
        headers={"origin": "http://evil.test"},
    )
    assert other_site.status_code == 403 and "other sites" in other_site.json()["error"]


def test_upload_limit_counts_bytes_even_without_a_declared_length(strict_client):
    def chunks():  # a streamed body has no Content-Length: the bytes themselves are counted
        for _ in range(30):
            yield b"x" * 1000

    response = strict_client.post(
        "/api/fill", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 413 and "upload over" in response.json()["error"]


class GatedModel:
    """Stands in for the Inpainter in the queue tests: records the seed of each fill as it
    starts and waits for ``gate`` before returning the image unchanged."""

    resolution, device = 256, "cpu"

    def __init__(self):
        self.gate = threading.Event()
        self.started = []

    def __call__(self, image, mask, *, seed, **kwargs):
        self.started.append(seed)
        assert self.gate.wait(timeout=60), "the test never opened the gate"
        return image


def _submit(client, photo, hole, seed):
    response = client.post("/api/jobs", files=files(png(photo), png(hole)), data={"seed": seed})
    assert response.status_code == 202, response.text
    return response.json()


def _wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_queue_runs_fills_in_order_and_tells_each_its_place(photo, hole):
    model = GatedModel()
    with TestClient(create_app(model)) as client:
        first = _submit(client, photo, hole, 1)
        _wait_for(lambda: model.started == [1], "the first fill to start")
        second, third = _submit(client, photo, hole, 2), _submit(client, photo, hole, 3)
        assert (second["position"], third["position"]) == (1, 2)  # fills ahead, running included
        assert client.get(f"/api/jobs/{first['id']}").json()["state"] == "running"
        assert client.get(f"/api/jobs/{third['id']}").json()["position"] == 2
        model.gate.set()
        for job in (first, second, third):
            _wait_for(
                lambda j=job: client.get(f"/api/jobs/{j['id']}").json()["state"] == "done", "done"
            )
        assert model.started == [1, 2, 3]


def test_cancelled_and_abandoned_fills_are_dropped_not_computed(photo, hole):
    from mat_fast.serve.fill_queue import FillQueue

    model = GatedModel()
    queue = FillQueue(abandon_after=0.5)  # a page that stops polling for 0.5 s has gone
    with TestClient(create_app(model, queue=queue)) as client:
        running = _submit(client, photo, hole, 1)
        _wait_for(lambda: model.started == [1], "the first fill to start")
        cancelled = _submit(client, photo, hole, 2)
        abandoned = _submit(client, photo, hole, 3)
        kept = _submit(client, photo, hole, 4)
        assert client.delete(f"/api/jobs/{cancelled['id']}").status_code == 204
        assert client.get(f"/api/jobs/{cancelled['id']}").status_code == 404
        time.sleep(0.8)  # nobody asks about the abandoned one meanwhile
        client.get(f"/api/jobs/{kept['id']}")  # ... while this one's page still polls
        client.get(f"/api/jobs/{running['id']}")
        model.gate.set()
        _wait_for(lambda: client.get(f"/api/jobs/{kept['id']}").json()["state"] == "done", "kept")
        assert model.started == [1, 4]
        assert client.get(f"/api/jobs/{abandoned['id']}").status_code == 404


def test_a_waiting_request_whose_client_disconnects_is_dropped(photo, hole):
    """The plain POST /api/fill: a client that hangs up while its fill waits in the queue
    is noticed (http.disconnect) and its fill is never computed."""
    import anyio
    import httpx

    model = GatedModel()
    app = create_app(model)
    app.state.queue.start()  # no lifespan outside the test client: start the worker here
    try:
        with TestClient(app) as client:
            _submit(client, photo, hole, 1)
            _wait_for(lambda: model.started == [1], "the first fill to start")
            request = httpx.Request(
                "POST",
                "http://testserver/api/fill",
                files=files(png(photo), png(hole)),
                data={"seed": "2"},
            )
            body = request.read()
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            sent = []

            async def receive():  # the body, then the client is gone
                return messages.pop(0) if messages else {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/api/fill",
                "raw_path": b"/api/fill",
                "query_string": b"",
                "root_path": "",
                "client": ("127.0.0.1", 1),
                "server": ("testserver", 80),
                "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
            }
            anyio.run(app, scope, receive, send)
            assert sent[0]["status"] == 499
            third = _submit(client, photo, hole, 3)
            model.gate.set()
            _wait_for(lambda: client.get(f"/api/jobs/{third['id']}").json()["state"] == "done", "3")
            assert model.started == [1, 3]
    finally:
        app.state.queue.stop()


def test_a_server_on_loopback_answers_only_to_its_own_names(inpainter):
    app = create_app(inpainter, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        assert client.get("/api/info").json()["resolution"] == 256
        assert client.get("/api/info", headers={"host": "localhost:7860"}).status_code == 200
        # a site whose DNS name was re-pointed to 127.0.0.1 sends its own name
        assert client.get("/api/info", headers={"host": "evil.test:7860"}).status_code == 400


def test_phone_photos_are_turned_upright_like_the_page_shows_them(client):
    """A JPEG stored sideways with an EXIF orientation: the mask is painted on the upright
    picture (browsers show it upright), so the server turns it upright too."""
    stored = Image.fromarray(np.full((30, 40, 3), 128, np.uint8))  # 40 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    upright_mask = png(np.zeros((40, 30), np.uint8))  # 30 wide, 40 high: as viewed
    response = client.post("/api/fill", files=files(buffer.getvalue(), upright_mask))
    assert response.status_code == 200 and decode(response.content).shape[:2] == (40, 30)
    sideways_mask = png(np.zeros((30, 40), np.uint8))
    response = client.post("/api/fill", files=files(buffer.getvalue(), sideways_mask))
    assert response.status_code == 422 and "mask is 40x30" in response.json()["error"]


def test_a_full_queue_says_busy_with_429(photo, hole):
    from mat_fast.serve.fill_queue import FillQueue

    model = GatedModel()
    with TestClient(create_app(model, queue=FillQueue(max_waiting=1))) as client:
        _submit(client, photo, hole, 1)
        _wait_for(lambda: model.started == [1], "the first fill to start")
        _submit(client, photo, hole, 2)  # waits: the queue is now full
        response = client.post("/api/jobs", files=files(png(photo), png(hole)))
        assert response.status_code == 429 and "the server is busy" in response.json()["error"]
        model.gate.set()
