"""LPIPS (AlexNet) against the lpips package's own code, and the weight-file handling."""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mat_fast.metrics import weights
from mat_fast.metrics.lpips import CHANNELS, LPIPS, AlexNetFeatures
from mat_fast.metrics.weights import WeightsError, WeightsFile, locate


def _random_lpips(seed=0):
    torch.manual_seed(seed)
    trunk = AlexNetFeatures()
    linear = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(CHANNELS)}
    alexnet = {k: v * 1.0 for k, v in trunk.state_dict().items()}
    alexnet["classifier.1.weight"] = torch.zeros(3, 3)  # torchvision's file also holds these
    return LPIPS().load_weights(alexnet, linear), alexnet, linear


def _lpips_by_hand(alexnet, linear, a, b):
    """The metric written out with functional ops, from the paper's definition."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        x = F.relu(F.conv2d(x, alexnet["features.0.weight"], alexnet["features.0.bias"], 4, 2))
        out.append(x)
        x = F.max_pool2d(x, 3, 2)
        x = F.relu(F.conv2d(x, alexnet["features.3.weight"], alexnet["features.3.bias"], 1, 2))
        out.append(x)
        x = F.max_pool2d(x, 3, 2)
        for index in (6, 8, 10):
            w, bias = alexnet[f"features.{index}.weight"], alexnet[f"features.{index}.bias"]
            x = F.relu(F.conv2d(x, w, bias, 1, 1))
            out.append(x)
        return out

    total = torch.zeros(a.shape[0])
    for k, (x, y) in enumerate(zip(taps(a), taps(b))):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        weight = linear[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += ((x - y) ** 2 * weight).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_a_functional_definition():
    model, alexnet, linear = _random_lpips()
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 96, 80) * 2 - 1, torch.rand(2, 3, 96, 80) * 2 - 1
    with torch.no_grad():
        got = model(a, b)
        expected = _lpips_by_hand(alexnet, linear, a, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert torch.all(got > 0)
    assert torch.all(model(a, a) == 0)


def test_lpips_matches_the_lpips_package(monkeypatch):
    """The lpips package's LPIPS(net='alex') with its own linear weights file; torchvision
    (which does not load here) is replaced by a stub handing it the same AlexNet trunk."""
    pytest.importorskip("scipy")
    model, alexnet, _ = _random_lpips(3)
    trunk = AlexNetFeatures()
    trunk.load_state_dict({k: v for k, v in alexnet.items() if k.startswith("features.")})
    stub = types.ModuleType("torchvision")
    stub.models = types.SimpleNamespace(alexnet=lambda pretrained=True, **_: trunk)
    monkeypatch.setitem(sys.modules, "torchvision", stub)
    monkeypatch.setitem(sys.modules, "torchvision.models", stub.models)
    try:
        import lpips
    except ImportError:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    reference = lpips.LPIPS(net="alex", verbose=False)
    linear_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    locate(weights.LPIPS_ALEX_LINEAR, str(linear_file))  # the pinned digest holds
    linear = torch.load(linear_file, map_location="cpu", weights_only=True)
    model.load_weights(alexnet, linear)
    torch.manual_seed(4)
    a, b = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = reference(a, b).flatten()
        got = model(a, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_load_weights_names_missing_and_misshapen_entries():
    model, alexnet, linear = _random_lpips()
    del alexnet["features.3.bias"]
    with pytest.raises(WeightsError, match="features.3.bias"):
        model.load_weights(alexnet, linear)
    _, alexnet, linear = _random_lpips()
    linear["lin2.model.1.weight"] = torch.zeros(1, 5, 1, 1)
    with pytest.raises(WeightsError, match="wrong shape: 2.weight"):
        model.load_weights(alexnet, linear)


# --- weight files: verify, cache, download ----------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAT_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "metrics"


def _served(tmp_path, content: bytes, **spec) -> WeightsFile:
    source = tmp_path / "served.bin"
    source.write_bytes(content)
    return WeightsFile(
        what="a test file", filename="net.pt", url=source.as_uri(), flag="--net", **spec
    )


def test_download_with_a_pinned_digest(tmp_path, cache):
    content = b"weights" * 1000
    spec = _served(tmp_path, content, sha256=hashlib.sha256(content).hexdigest())
    path = locate(spec)
    assert path == cache / "net.pt" and path.read_bytes() == content
    assert [p.name for p in cache.iterdir()] == ["net.pt"]  # no partial files left
    path.write_bytes(content[:-1])  # damaged in the cache
    with pytest.raises(WeightsError, match="corrupt or not the right file.*delete it"):
        locate(spec)


def test_a_download_with_the_wrong_digest_is_not_kept(tmp_path, cache):
    spec = _served(tmp_path, b"something else", sha256="0" * 64)
    with pytest.raises(WeightsError, match="download .* is wrong"):
        locate(spec)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_unpinned_files_are_checked_against_the_digest_recorded_at_download(tmp_path, cache):
    spec = _served(tmp_path, b"detector bytes")
    path = locate(spec)
    record = Path(f"{path}.sha256").read_text().split()[0]
    assert record == hashlib.sha256(b"detector bytes").hexdigest()
    assert locate(spec) == path
    path.write_bytes(b"detector bytez")
    with pytest.raises(WeightsError, match="was recorded at download"):
        locate(spec)


def test_prefix_pinned_files_and_explicit_paths(tmp_path, cache):
    content = b"alexnet?"
    digest = hashlib.sha256(content).hexdigest()
    good = _served(tmp_path, content, sha256_prefix=digest[:8])
    bad = _served(tmp_path, content, sha256_prefix="ffffffff" if digest[0] != "f" else "00000000")
    local = tmp_path / "local.pth"
    local.write_bytes(content)
    assert locate(good, str(local)) == local
    with pytest.raises(WeightsError, match="expected one starting .*check the path given to --net"):
        locate(bad, str(local))
    with pytest.raises(WeightsError, match="does not exist"):
        locate(good, str(tmp_path / "missing.pth"))


def test_offline_failure_says_how_to_pass_the_file(tmp_path, cache):
    spec = WeightsFile(
        what="a test file", filename="net.pt", url=(tmp_path / "nowhere").as_uri(), flag="--net"
    )
    with pytest.raises(WeightsError, match="cannot download .*pass it with --net PATH"):
        locate(spec)
    with pytest.raises(WeightsError, match="not in the cache"):
        locate(spec, download=False)


def test_the_inception_detector_loader_rejects_non_torchscript(tmp_path):
    from mat_fast.metrics.detector import load_inception_detector

    fake = tmp_path / "inception.pt"
    fake.write_bytes(b"not a zip archive")
    with pytest.raises(WeightsError, match="not a TorchScript feature detector.*--detector"):
        load_inception_detector(str(fake))


def test_an_installed_lpips_package_supplies_the_linear_weights_unimported(cache):
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is None:
        pytest.skip("the lpips package is not installed (pip install --no-deps lpips)")
    already = "lpips" in sys.modules
    path = locate(weights.LPIPS_ALEX_LINEAR, download=False)  # no cache, no download
    assert path == Path(spec.origin).parent / "weights" / "v0.1" / "alex.pth"
    assert ("lpips" in sys.modules) == already  # found without importing it (or torchvision)
