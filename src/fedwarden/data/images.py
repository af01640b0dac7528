"""Image folders as one client's examples: one subfolder per class, decoded by Pillow.

The layout torchvision's ``ImageFolder`` reads::

    site_a/
        cat/  001.png  002.jpg ...
        dog/  ...

Each image is converted to ``image_mode`` (``"L"`` grayscale or ``"RGB"``),
resized to ``image_shape`` (height, width), scaled to [0, 1] and flattened
channel-first (C x H x W), so a model sees ``C * H * W`` features and a
convolutional model can reshape them back. The label is the subfolder's name,
numbered by ``data.classes`` (or in sorted order across the sites).

Pillow comes with the ``data`` extra and is imported when an image is decoded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.dataset import Array

if TYPE_CHECKING:
    from PIL import Image


def read_image_folder(folder: Path, config: DataConfig) -> dict[str, Array]:
    """``x`` (one flattened image per row) and ``y`` (the class subfolder names)."""
    entries = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    stray = [path for path in entries if not path.is_dir()]
    if stray:
        raise DataError(
            f"{stray[0]} is not in a class subfolder; an image folder holds one subfolder per "
            f"class (e.g. {folder}/cat/001.png), and nothing else"
        )
    if not entries:
        raise DataError(
            f"{folder} holds no class subfolders; put each class's images in a subfolder "
            "named after the class"
        )
    vectors, labels = [], []
    for class_folder in entries:
        for path in sorted(class_folder.iterdir()):
            if path.name.startswith("."):
                continue
            vectors.append(decode_image_file(path, config))
            labels.append(class_folder.name)
    if not vectors:
        raise DataError(f"{folder} holds no images; drop the client or add its images")
    return {"x": np.stack(vectors), "y": np.asarray(labels, dtype=str)}


def decode_image_file(path: Path, config: DataConfig) -> Array:
    """The image file at ``path`` as a flat float32 vector; an undecodable file is named."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"reading {path} needs Pillow; install it with pip install 'fedwarden[data]'"
        ) from None
    if path.is_dir():
        raise DataError(
            f"{path} is a folder inside a class subfolder; images sit directly in their "
            "class's subfolder"
        )
    try:
        with Image.open(path) as image:
            return image_vector(image, config)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"{path} is not an image Pillow can decode ({error}); remove or replace it"
        ) from None


def image_vector(image: Image.Image, config: DataConfig) -> Array:
    """A decoded image converted, resized, scaled to [0, 1] and flattened channel-first."""
    from PIL import Image

    height, width = config.image_shape
    resized = image.convert(config.image_mode).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0
    if pixels.ndim == 3:
        pixels = pixels.transpose(2, 0, 1)
    return pixels.reshape(-1)
