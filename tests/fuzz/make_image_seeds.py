#!/usr/bin/env python3
"""Writes the seeds of tests/fuzz/corpus/fuzz_image/: one small image per PNG colour type / bit
depth / interlace and per JPEG kind (baseline, progressive, grey, CMYK, EXIF-rotated). The seeds
are committed; this is how they were made and how to make them again.
    python3 tests/fuzz/make_image_seeds.py"""
import io
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "image"))
from test_image_pil import chunk, exif_bytes, png_bytes  # noqa: E402  (the test's PNG writer)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_image")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
H, W = 7, 9


def save(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def pil(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


rgb = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
save("rgb.png", pil(rgb, "PNG"))
save("rgba.png", pil(Image.fromarray(rng.integers(0, 256, (H, W, 4), dtype=np.uint8), "RGBA"), "PNG"))
save("grey.png", pil(rgb.convert("L"), "PNG"))
save("grey_alpha.png", pil(rgb.convert("LA"), "PNG"))
save("bilevel.png", pil(rgb.convert("1"), "PNG"))
save("palette4_trns.png", pil(rgb.quantize(colors=12), "PNG", bits=4, transparency=3))
save("exif6.png", pil(rgb, "PNG", exif=exif_bytes(6)))
save("grey2.png", png_bytes(rng.integers(0, 4, (H, W)), 2, 0))
save("grey16_sbit.png", png_bytes(rng.integers(0, 65536, (H, W)), 16, 0, extra=chunk(b"sBIT", bytes([12]))))
save("rgb16_interlaced.png", png_bytes(rng.integers(0, 65536, (H, W, 3)), 16, 2, interlace=True))
save("rgba_interlaced.png", png_bytes(rng.integers(0, 256, (H, W, 4)), 8, 6, interlace=True))
save("baseline.jpg", pil(rgb, "JPEG", quality=80))
save("progressive.jpg", pil(rgb, "JPEG", quality=80, progressive=True))
save("grey.jpg", pil(rgb.convert("L"), "JPEG", quality=80))
save("cmyk.jpg", pil(rgb.convert("CMYK"), "JPEG", quality=80))
save("exif8.jpg", pil(rgb, "JPEG", quality=80, exif=exif_bytes(8)))
# png_ihdr_4g_by_4g (committed, not written here): fuzz_image's first finding, an IHDR of
# 0xffffffff x 0xffffffff whose pixel count overflowed the limit check
print("wrote %d seeds to %s" % (len(os.listdir(out)), out))
