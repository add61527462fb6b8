"""mat_fast.training.data: upstream's dataset preparation, keyed randomness, clear errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from mat_fast.training.data import DatasetError, ImageMaskDataset, StreamSampler, make_loader


def _write_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / ("sub" if i % 2 else "") / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_folder_recursive_crop_masks_and_zip_equal(tmp_path):
    _write_images(tmp_path / "data", [(40, 36), (32, 32), (50, 33)])
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    ds = ImageMaskDataset(tmp_path / "data", 32, seed=3)
    assert ds.names == ["img0.png", "img2.png", "sub/img1.png"]  # recursive, sorted, images only
    img, mask, label = ds[5]
    assert img.dtype == torch.uint8 and img.shape == (3, 32, 32) and label.shape == (0,)
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1  # a hole and known pixels
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as z:
        for name in ds.names:
            z.write(tmp_path / "data" / name, name)
    zipped = ImageMaskDataset(tmp_path / "data.zip", 32, seed=3)
    for pos in range(7):
        for a, b in zip(ds[pos], zipped[pos]):
            assert torch.equal(a, b)


def test_positions_are_deterministic_and_epochs_permute(tmp_path):
    _write_images(tmp_path / "d", [(32, 32)] * 4)
    a = ImageMaskDataset(tmp_path / "d", 32, seed=1)
    b = ImageMaskDataset(tmp_path / "d", 32, seed=1)
    c = ImageMaskDataset(tmp_path / "d", 32, seed=2)
    assert all(torch.equal(a[p][1], b[p][1]) for p in range(6))
    assert not all(torch.equal(a[p][1], c[p][1]) for p in range(6))
    assert sorted(a.index_at(p) for p in range(4)) == [0, 1, 2, 3]  # one epoch = each once
    assert sorted(a.index_at(p) for p in range(4, 8)) == [0, 1, 2, 3]


def test_mirror_doubles_with_flips(tmp_path):
    _write_images(tmp_path / "d", [(32, 32)])
    ds = ImageMaskDataset(tmp_path / "d", 32, mirror=True)
    assert len(ds) == 2
    by_index = {ds.index_at(p): ds[p][0] for p in range(2)}
    assert torch.equal(by_index[1], by_index[0].flip(-1))


def test_loader_workers_and_ranks_give_the_same_stream(tmp_path):
    _write_images(tmp_path / "d", [(40, 40)] * 5)
    ds = ImageMaskDataset(tmp_path / "d", 32, seed=7)
    one = next(iter(make_loader(ds, 4, 0, 1, 3, workers=0)))
    two = next(iter(make_loader(ds, 4, 0, 1, 3, workers=2)))
    ranks = [next(iter(make_loader(ds, 4, r, 2, 3, workers=0))) for r in range(2)]
    for i in range(2):
        assert torch.equal(one[i], two[i])
        assert torch.equal(one[i], torch.cat([ranks[0][i], ranks[1][i]]))
    sampler = iter(StreamSampler(4, 1, 2, start_step=2))
    assert [next(sampler) for _ in range(4)] == [10, 11, 14, 15]


def test_clear_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        ImageMaskDataset(tmp_path / "empty", 32)
    with pytest.raises(DatasetError, match="expected a folder"):
        ImageMaskDataset(tmp_path / "missing", 32)
    _write_images(tmp_path / "small", [(40, 40), (31, 64)])
    with pytest.raises(DatasetError, match=r"img1\.png: 31x64 is smaller than .* 32"):
        ImageMaskDataset(tmp_path / "small", 32)
    _write_images(tmp_path / "bad", [(40, 40)])
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"broken\.jpg: cannot read the image"):
        ImageMaskDataset(tmp_path / "bad", 32)
    (tmp_path / "bad.zip").write_bytes(b"PK junk")
    with pytest.raises(DatasetError, match="not a readable zip"):
        ImageMaskDataset(tmp_path / "bad.zip", 32)
