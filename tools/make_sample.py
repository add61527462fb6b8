"""Draw the bundled demo picture (a synthetic landscape, 768x512) and its mask.

Our own procedurally drawn image, so the demo needs no download and ships no third-party
pixels. Rerun to regenerate mat_fast/assets/sample.png and sample_mask.png.
"""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H = 768, 512
OUT = os.path.join(os.path.dirname(__file__), "..", "mat_fast", "assets")


def landscape() -> Image.Image:
    y = np.linspace(0, 1, H)[:, None, None]
    sky = (1 - y) * np.array([70, 120, 200]) + y * np.array([250, 200, 160])
    img = Image.fromarray(np.broadcast_to(sky, (H, W, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((560, 70, 650, 160), fill=(255, 236, 170))  # sun
    x = np.arange(W)
    for base, amp, freq, color in (
        (300, 40, 0.010, (90, 110, 140)),
        (340, 30, 0.017, (60, 120, 70)),
    ):
        ridge = base - amp * np.sin(x * freq) - 0.5 * amp * np.sin(x * freq * 2.7 + 1)
        draw.polygon([(0, H)] + [(int(i), int(r)) for i, r in zip(x, ridge)] + [(W, H)], fill=color)
    draw.rectangle((0, 400, W, H), fill=(40, 90, 150))  # lake
    rng = np.random.default_rng(0)
    for _ in range(400):  # ripples
        cx, cy = rng.integers(0, W), rng.integers(405, H)
        draw.line((cx, cy, cx + rng.integers(5, 25), cy), fill=(90, 140, 200))
    draw.rectangle((300, 250, 360, 400), fill=(120, 60, 40))  # the "tower" to remove
    draw.polygon([(290, 250), (330, 200), (370, 250)], fill=(160, 40, 40))
    return img.filter(ImageFilter.GaussianBlur(0.6))


def mask() -> Image.Image:
    m = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(m)
    draw.rectangle((282, 188, 378, 412), fill=255)  # white = fill
    return m


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    landscape().save(os.path.join(OUT, "sample.png"), optimize=True)
    mask().save(os.path.join(OUT, "sample_mask.png"), optimize=True)
