"""Encoded images (PNG, JPEG) to the model's input tensor, as its config says."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.model_config import Preprocessing

ACCEPTED_FORMATS = ("PNG", "JPEG")


def decode_image(data: bytes, spec: Preprocessing, index: int, what: str, max_pixels: int) -> np.ndarray:
    """One image file to float32 ``[1, height, width]``; ``what``/``index`` name it in errors.

    The pixel count is checked from the header, before decoding: a small file
    that decodes to gigapixels (a decompression bomb) is refused unread."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(
                    f"{what}.encoded_images[{index}] is {width}×{height} pixels, more than the limit of {max_pixels}; "
                    "downscale it before sending")
            image.load()
            pixels = image.convert(spec.color_mode).resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidArgument(
            f"{what}.encoded_images[{index}] is not a readable PNG or JPEG image ({error.__class__.__name__}); "
            "send PNG or JPEG file bytes, or a tensor"
        ) from None
    array = np.asarray(pixels, dtype=np.float32)
    if spec.invert:
        array = 255.0 - array
    return ((array / 255.0 - spec.mean) / spec.std)[None]


def decode_images(images: list[bytes], spec: Preprocessing, what: str, max_pixels: int) -> np.ndarray:
    """A batch of image files to float32 ``[N, 1, height, width]``."""
    return np.stack([decode_image(data, spec, index, what, max_pixels) for index, data in enumerate(images)])
