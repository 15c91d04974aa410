"""Where a TIFF's voxels lie, as the microscopy software that wrote it says.

* **ImageJ / Fiji** (``Image > Properties``): the pixel width and height are the inverse of the
  ``XResolution`` and ``YResolution`` tags (pixels per unit), the voxel depth is ``spacing``
  in the description (ImageJ's default 1), the unit is ``unit`` (``micron``, ``\\u00B5m``,
  ``nm``); ``xorigin``, ``yorigin``, ``zorigin`` are the origin in pixels, so voxel 0 lies at
  ``-origin * size``. A file without a unit (or ``pixel``) is uncalibrated.
* **OME-TIFF** (Bio-Formats, microscope vendors' exporters): ``PhysicalSizeX/Y/Z`` of the
  first image's ``Pixels``, each with its own unit (default micrometre), taken to the unit of
  x. A stack without ``PhysicalSizeZ`` says nothing of its depth and is left unplaced.

Any other TIFF's resolution tags (72 dots per inch from a scanner or an image editor) are not
a voxel size, and are not read as one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .ome_zarr import Placement, checked_placement, space_unit

OME_UNIT = "\u00b5m"  # OME-XML's default unit of a physical size
METRES = {"meter": 1.0, "centimeter": 1e-2, "millimeter": 1e-3, "micrometer": 1e-6, "nanometer": 1e-9,
          "picometer": 1e-12, "angstrom": 1e-10}
SPELLINGS = {"micron": "micrometer", "microns": "micrometer", "\\u00b5m": "micrometer", "\u03bcm": "micrometer",
             "\u00c5": "angstrom", "\u212b": "angstrom"}  # how ImageJ and OME spell these units


def tiff_placement(path: str | Path) -> Placement | None:
    """The placement of series 0 of the TIFF ``path``, spatial axes in z, y, x order, or None
    where the file does not say (or says sizes that are not positive and finite)."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        if not tiff.series:
            return None
        spatial = [a for a in "ZYX" if a in tiff.series[0].axes]
        if tiff.is_ome:
            return ome_tiff_placement(tiff.ome_metadata or "", spatial)
        if tiff.is_imagej:
            page = tiff.pages.first
            return imagej_placement(tiff.imagej_metadata or {}, _tag(page, "YResolution"), _tag(page, "XResolution"),
                                    spatial)
    return None


def sections_placement(path: str | Path) -> Placement | None:
    """The placement of a folder of sections (:mod:`.tiff_sections`), z, y, x, from its first
    file: its ImageJ calibration when it names the voxel depth (``spacing``; a section alone
    usually does not, and then the volume is left unplaced rather than given a depth of 1),
    or its OME-XML's ``PhysicalSizeZ/Y/X``."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        if tiff.is_ome:
            return ome_tiff_placement(tiff.ome_metadata or "", ["Z", "Y", "X"])
        metadata = tiff.imagej_metadata or {}
        if tiff.is_imagej and "spacing" in metadata:
            page = tiff.pages.first
            return imagej_placement(metadata, _tag(page, "YResolution"), _tag(page, "XResolution"), ["Z", "Y", "X"])
    return None


def _tag(page: Any, name: str) -> Any:
    tag = page.tags.get(name)
    return None if tag is None else tag.value


def unit_name(text: Any) -> str | None:
    """A unit as ImageJ or OME writes it, as a UDUNITS name; None for none, ``pixel`` or one unknown."""
    if not isinstance(text, str) or not text.strip():
        return None
    text = text.strip()
    return SPELLINGS.get(text) or SPELLINGS.get(text.lower()) or space_unit([text])


def imagej_placement(metadata: dict[str, Any], y_resolution: Any, x_resolution: Any,
                     spatial: list[str]) -> Placement | None:
    """The placement ImageJ's calibration gives ``spatial`` (letters of ``ZYX``)."""
    unit = unit_name(metadata.get("unit"))
    if unit is None:
        return None
    try:
        size = {"Z": float(metadata.get("spacing", 1.0)), "Y": _per_pixel(y_resolution), "X": _per_pixel(x_resolution)}
        origin = {a: float(metadata.get(f"{a.lower()}origin", 0.0)) for a in "ZYX"}
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return checked_placement([size[a] for a in spatial], [0.0 - origin[a] * size[a] for a in spatial], unit)


def _per_pixel(resolution: Any) -> float:
    """The size of a pixel from a TIFF resolution tag (pixels per unit, a rational)."""
    if resolution is None:
        return 1.0
    numerator, denominator = resolution if isinstance(resolution, tuple) else (resolution, 1)
    return float(denominator) / float(numerator)


def ome_tiff_placement(xml: str, spatial: list[str]) -> Placement | None:
    """The placement OME-XML's first ``Pixels`` gives ``spatial`` (letters of ``ZYX``)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if re.sub(r"^\{.*\}", "", e.tag) == "Pixels"), None)
    if pixels is None or "X" not in spatial:
        return None
    unit = unit_name(pixels.get("PhysicalSizeXUnit", OME_UNIT))
    sizes = []
    for axis in spatial:
        size, its_unit = pixels.get(f"PhysicalSize{axis}"), unit_name(pixels.get(f"PhysicalSize{axis}Unit", OME_UNIT))
        if size is None or unit is None or its_unit is None or its_unit not in METRES or unit not in METRES:
            return None
        try:
            sizes.append(float(size) * METRES[its_unit] / METRES[unit])
        except ValueError:
            return None
    return checked_placement(sizes, [0.0] * len(sizes), unit)
