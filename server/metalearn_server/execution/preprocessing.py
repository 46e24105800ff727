"""Encoded images (PNG, JPEG) to the model's input tensor, as its config says.

Decoding is bounded by what it really costs.  Pixels are counted from each
file's header before anything is decoded, against a limit per image and one
per request (:class:`PixelBudget`), because a 2 kB PNG can hold 16 million
pixels.  Shrinking runs in time proportional to the pixels decoded: JPEG is
decoded at a reduced scale (``draft``) and large images are first reduced by
an integer factor (``reducing_gap``) before the Lanczos filter, whose cost
otherwise grows with the scale factor (a 16,777,216 × 1 PNG took 6.6 s to
resize, 0.09 s this way; a 105 px drawing is resized exactly as before).
Every way a file can fail to decode is the caller's error, never the server's.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.model_config import Preprocessing

ACCEPTED_FORMATS = ("PNG", "JPEG")
#: Shrink by whole factors first down to this many times the target size, then filter (Pillow's
#: ``reducing_gap``); 3 keeps the result indistinguishable from filtering the full image.
REDUCING_GAP = 3.0
# Pillow's own decompression-bomb guard raises at open, before a caller can be told the size in the same
# words as any other oversized image; the limits below are checked from the header instead.
Image.MAX_IMAGE_PIXELS = None


class PixelBudget:
    """Pixels a request's images may decode to, in all (``--max-request-pixels``)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit

    def take(self, pixels: int, name: str) -> None:
        if pixels > self.left:
            raise InvalidArgument(f"{name} takes the request's images past {self.limit} pixels in all, the limit "
                                  "per request; downscale them (the model uses a few dozen pixels a side) or send "
                                  "fewer per request")
        self.left -= pixels


def decode_image(data: bytes, spec: Preprocessing, name: str, max_pixels: int, budget: PixelBudget) -> np.ndarray:
    """One image file to float32 ``[1, height, width]``; ``name`` names it in errors."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(f"{name} is {width}×{height} pixels, more than the limit of {max_pixels}; "
                                      "downscale it before sending")
            budget.take(width * height, name)
            if image.format == "JPEG":
                image.draft(spec.color_mode, (int(spec.width * REDUCING_GAP), int(spec.height * REDUCING_GAP)))
            pixels = image.convert(spec.color_mode).resize((spec.width, spec.height), Image.Resampling.LANCZOS,
                                                           reducing_gap=REDUCING_GAP)
    except InvalidArgument:
        raise
    except Exception as error:  # noqa: BLE001 - a corrupt file raises anything (SyntaxError, struct.error, …)
        raise InvalidArgument(f"{name} is not a readable PNG or JPEG image ({error.__class__.__name__}); "
                              "send PNG or JPEG file bytes, or a tensor") from None
    array = np.asarray(pixels, dtype=np.float32)
    if spec.invert:
        array = 255.0 - array
    return ((array / 255.0 - spec.mean) / spec.std)[None]


def decode_images(images: list[bytes] | tuple[bytes, ...], spec: Preprocessing, what: str, max_pixels: int,
                  budget: PixelBudget, first_index: int = 0) -> np.ndarray:
    """A batch of image files to float32 ``[N, 1, height, width]``; ``first_index`` numbers them in errors."""
    return np.stack([decode_image(data, spec, f"{what}.encoded_images[{first_index + i}]", max_pixels, budget)
                     for i, data in enumerate(images)])
