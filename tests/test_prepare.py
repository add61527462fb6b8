"""Preparing images apart from running them (what folder mode's DataLoader workers do):
``Inpainter.preparer()`` + ``Inpainter.fill()`` give exactly what one ``Inpainter`` call
gives, the preparer needs no network and survives pickling, and what cannot fit is refused
while preparing, with the call's message."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from mat_fast import Inpainter, MemoryBudgetError
from mat_fast.prepare import Preparer


def _pictures(sizes=((40, 70), (60, 50))):
    """Images with two hole regions each (far enough apart in the larger ones to be cropped
    apart); small, so that every canvas on the 128 network stays 128x128."""
    rng = np.random.default_rng(5)
    pictures = []
    for h, w in sizes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        hole = np.zeros((h, w), bool)
        hole[h // 4 : h // 2, w // 5 : w // 2] = True
        hole[3 * h // 4 :, 3 * w // 4 :] = True  # a second region: two crops
        pictures.append((image, hole))
    return pictures


@pytest.mark.parametrize("strategy", ["full", "crop"])
def test_fill_of_prepared_images_is_the_call(stand_in_generator, strategy):
    inpaint = Inpainter(stand_in_generator, device="cpu", batch_size=2)
    (a, ha), (b, hb) = _pictures(
        ((40, 70), (160, 150)) if strategy == "crop" else ((40, 70), (60, 50))
    )
    options = dict(strategy=strategy, crop_margin=16)
    called = inpaint([a, b], [ha, hb], seed=[3, 4], **options)
    prepare = inpaint.preparer(**options)
    prepared = [prepare(a, ha, name="a.png"), prepare(b, hb, name="b.png")]
    if strategy == "crop":
        assert len(prepared[1].jobs) == 2  # each hole region its own canvas
    filled = inpaint.fill(prepared, seed=[3, 4])
    for got, want in zip(filled, called):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    # an image's result does not depend on the others it is filled with
    alone = inpaint.fill([prepare(b, hb)], seed=[4])
    assert np.array_equal(alone[0], called[1])


def test_preparer_needs_no_network_and_pickles(stand_in_generator):
    inpaint = Inpainter(stand_in_generator, device="cpu")
    prepare = inpaint.preparer(strategy="crop", crop_margin=16)
    assert all(not hasattr(v, "parameters") for v in vars(prepare).values())
    copy = pickle.loads(pickle.dumps(prepare))
    assert isinstance(copy, Preparer) and copy == prepare
    (a, ha), _ = _pictures()
    one, two = prepare(a, ha), copy(a, ha)
    assert len(one.jobs) == len(two.jobs) > 0
    for x, y in zip(one.jobs, two.jobs):
        assert x.box == y.box and np.array_equal(x.image, y.image)
        assert np.array_equal(x.known, y.known)


def test_preparer_warns_by_name_and_refuses_what_cannot_fit(stand_in_generator, caplog):
    (a, ha), _ = _pictures()
    with caplog.at_level(logging.WARNING, logger="mat_fast"):
        Inpainter(stand_in_generator, device="cpu").preparer()(a, np.zeros_like(ha), name="x/a.png")
    assert "the mask of x/a.png has nothing to fill" in caplog.text
    tight = Inpainter(stand_in_generator, device="cpu", max_memory=1 << 20)  # 1 MiB
    with pytest.raises(MemoryBudgetError, match="available") as refused:
        tight.preparer(strategy="full")(a, ha)
    with pytest.raises(MemoryBudgetError) as called:
        tight(a, ha, strategy="full")
    assert str(refused.value) == str(called.value)


def test_fill_checks_its_seeds(stand_in_generator):
    inpaint = Inpainter(stand_in_generator, device="cpu")
    (a, ha), _ = _pictures()
    prepared = [inpaint.preparer()(a, ha)]
    with pytest.raises(ValueError, match="one seed per image"):
        inpaint.fill(prepared, seed=[1, 2])
