"""Images commands take from a folder: the image files in it, and the few an export's parity check runs
on (the first four of a folder of images or of a VOC folder's val split, else of the shipped
calibration images)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from aspp_deploy.data.voc import IMAGE_EXTENSIONS, VOCSegmentation
from aspp_deploy.runtime.calibration import SHIPPED_CALIBRATION


def image_files(folder: Path) -> List[Path]:
    """The image files in ``folder`` (by extension, hidden files left out) in name order; none if it is not a folder."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")) if folder.is_dir() else []


def parity_images(data: Optional[Path]) -> List[Path]:
    """Up to four images from ``data`` (a folder of images or a VOC folder's val split), else shipped ones."""
    if data is None:
        return image_files(SHIPPED_CALIBRATION)[:4]
    if Path(data).is_dir() and not (Path(data) / "ImageSets").exists():
        return image_files(Path(data))[:4]  # a folder of images (no masks)
    return [s.image for s in VOCSegmentation(data, "val").samples[:4]]
