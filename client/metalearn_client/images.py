"""Image files to model-ready arrays on the caller's side, with the preprocessing ``GetModel`` reports.

Sending files as they are (``encoded_images``) needs none of this: the server
decodes them itself.  Arrays are for callers who keep, augment or reuse the
model input (``create_task`` once, ``stream`` many batches, ``embed``), or who
check what the model sees.  The steps are ``Preprocessing``'s, in its order
(protos/metalearn/v1/model.proto), with the server's resampling (Lanczos,
reducing gap 3, JPEG drafts), so an array from here and the same file sent
encoded give the same answer.  Needs Pillow: ``pip install 'metalearn-client[images]'``.
"""
from __future__ import annotations

import io
import os
from typing import Sequence, Union

import numpy as np
from metalearn.v1 import model_pb2

from metalearn_client.items import refuse_single

#: Pillow's ``reducing_gap`` on resize, as the server uses it (see its ``execution/preprocessing.py``).
REDUCING_GAP = 3.0


def load_images(sources: Sequence[Union[str, os.PathLike, bytes]], model: model_pb2.GetModelResponse) -> np.ndarray:
    """PNG/JPEG files (paths or bytes) as float32 ``[N, 1, height, width]``, preprocessed as ``model`` (what
    :meth:`Client.get_model` returns) says: converted to its colour mode, resized, inverted if it says so,
    scaled to [0, 1] and normalised by its mean and std."""
    refuse_single(sources, "sources", '["one.png"]')
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("load_images needs Pillow: pip install 'metalearn-client[images]'") from None
    spec = model.preprocessing
    arrays = np.empty((len(sources), 1, spec.height, spec.width), np.float32)
    for index, source in enumerate(sources):
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.format == "JPEG":  # decoded at a reduced scale where that suffices, as the server does
                image.draft(spec.color_mode, (int(spec.width * REDUCING_GAP), int(spec.height * REDUCING_GAP)))
            pixels = image.convert(spec.color_mode).resize((spec.width, spec.height), Image.Resampling.LANCZOS,
                                                           reducing_gap=REDUCING_GAP)
        array = np.asarray(pixels, dtype=np.float32)
        if spec.invert:
            array = 255.0 - array
        arrays[index, 0] = (array / 255.0 - spec.mean) / spec.std
    return arrays
