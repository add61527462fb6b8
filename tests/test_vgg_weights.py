"""Where the perceptual loss's VGG19 weights come from: the checked cache, a path, a state
dict or none, and the one clear error when they cannot be had (never a silent fallback).
The real download needs internet access; here it is replaced by a local file."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from mat_fast.training import PerceptualLoss, TwoStageLoss, VGGWeightsError, vgg19_layer_names
from mat_fast.training import vgg_weights as vw


@pytest.fixture(scope="module")
def pcp():
    torch.manual_seed(0)
    return PerceptualLoss()


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory, pcp):
    """A file laid out like torchvision's vgg19 weights (features.N.*, classifier.*), with
    values that differ from ``pcp``'s own random ones."""
    g = torch.Generator().manual_seed(1)
    names = vgg19_layer_names()
    state = {}
    for key, t in pcp.state_dict().items():
        if ".vgg_net." in key:
            _, _, name, leaf = key.split(".")
            state[f"features.{names.index(name)}.{leaf}"] = torch.randn(t.shape, generator=g)
    state["classifier.0.weight"] = torch.randn(8, 4, generator=g)
    path = tmp_path_factory.mktemp("vgg") / "vgg19-test.pth"
    torch.save(state, path)
    return path, state


def _fresh():
    torch.manual_seed(2)
    return PerceptualLoss()


def _assert_loaded(pcp, state):
    names = vgg19_layer_names()
    for key, t in pcp.state_dict().items():
        if ".vgg_net." in key:
            _, _, name, leaf = key.split(".")
            assert torch.equal(t, state[f"features.{names.index(name)}.{leaf}"]), key


@pytest.fixture
def cache(tmp_path, monkeypatch, torchvision_file):
    """An empty cache, a fake download that copies the local file (counted), and the
    expected digest prefix set to that file's."""
    monkeypatch.setenv("MAT_FAST_CACHE", str(tmp_path / "cache"))
    path, _ = torchvision_file
    calls = []

    def fake_download(url, dst):
        calls.append(url)
        dst.write_bytes(path.read_bytes())

    monkeypatch.setattr(vw, "_download", fake_download)
    monkeypatch.setattr(vw, "VGG19_SHA256_PREFIX", vw.file_sha256(path)[:8])
    return calls


def test_path_in_torchvision_layout_loads(torchvision_file):
    path, state = torchvision_file
    pcp = _fresh()
    vw.load_vgg_weights(pcp, str(path))
    _assert_loaded(pcp, state)


def test_upstream_layout_state_dict_loads(torchvision_file, pcp):
    source = _fresh()
    vw.load_vgg_weights(source, torchvision_file[0])
    target = _fresh()
    vw.load_vgg_weights(target, source.state_dict())  # vgg.vgg_net.* keys, as upstream's
    _assert_loaded(target, torchvision_file[1])


def test_download_once_into_the_cache(cache, torchvision_file):
    pcp = _fresh()
    vw.load_vgg_weights(pcp, vw.TORCHVISION_VGG19)
    _assert_loaded(pcp, torchvision_file[1])
    assert cache == [vw.VGG19_URL]
    assert (vw.vgg_cache_dir() / vw.VGG19_FILE).is_file()
    assert [p.name for p in vw.vgg_cache_dir().iterdir()] == [vw.VGG19_FILE]
    vw.load_vgg_weights(_fresh(), vw.TORCHVISION_VGG19)
    assert cache == [vw.VGG19_URL]  # read from the cache the second time


def test_download_with_wrong_digest_is_refused_and_not_kept(cache, monkeypatch):
    monkeypatch.setattr(vw, "VGG19_SHA256_PREFIX", "00000000")
    with pytest.raises(VGGWeightsError, match="downloaded VGG19 weights .* not torchvision"):
        vw.cached_vgg19_file()
    assert list(vw.vgg_cache_dir().iterdir()) == []  # nothing half-checked left behind


def test_corrupt_cached_file_is_refused(cache):
    vw.vgg_cache_dir().mkdir(parents=True)
    (vw.vgg_cache_dir() / vw.VGG19_FILE).write_bytes(b"truncated")
    with pytest.raises(VGGWeightsError, match="cached VGG19 weights .* Delete it"):
        vw.load_vgg_weights(_fresh(), vw.TORCHVISION_VGG19)
    assert cache == []  # no silent re-download


def test_no_network_gives_one_clear_error(cache, monkeypatch):
    def offline(url, dst):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(vw, "_download", offline)
    with pytest.raises(VGGWeightsError) as err:
        TwoStageLoss("cpu", None, None, None)  # the default weights: torchvision's
    msg = str(err.value)
    assert vw.VGG19_URL in msg and "name resolution" in msg
    assert "vgg_weights='/path/to/vgg19-dcbb9e9d.pth'" in msg and "vgg_weights=None" in msg
    assert list(vw.vgg_cache_dir().iterdir()) == []


def test_missing_path_and_wrong_files(tmp_path):
    with pytest.raises(VGGWeightsError, match="no such file .*nothere.pth.*Download"):
        vw.load_vgg_weights(_fresh(), tmp_path / "nothere.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(VGGWeightsError, match="bad.pth.*web page"):
        vw.load_vgg_weights(_fresh(), bad)
    with pytest.raises(VGGWeightsError, match="lacks VGG19 weights vgg.vgg_net.conv1_1"):
        vw.load_vgg_weights(_fresh(), {"features.0.weight_x": torch.zeros(1)})
    short = {k: v[:1] for k, v in _fresh().state_dict().items()}
    with pytest.raises(VGGWeightsError, match="has shape .* not a VGG19"):
        vw.load_vgg_weights(_fresh(), short)
    with pytest.raises(TypeError, match="vgg_weights must be"):
        vw.load_vgg_weights(_fresh(), 3)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAT_FAST_CACHE", str(tmp_path / "c"))
    assert vw.vgg_cache_dir() == tmp_path / "c" / "vgg"
    monkeypatch.delenv("MAT_FAST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert vw.vgg_cache_dir() == tmp_path / "x" / "mat_fast" / "vgg"
