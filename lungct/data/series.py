"""Slices in series order, and what a radiologist would want flagged about a series.

A series is the converted rows that share a SeriesInstanceUID, ordered by position along
the slice normal (``lungct.io.dicom.slice_position``); InstanceNumber is only a fallback,
with a warning, for a series without geometry. Flags: two slices at one position, a gap
(a spacing over :data:`GAP_FACTOR` times the series' median), a tilted gantry.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

GAP_FACTOR = 1.5  # a spacing this many times the series' median spacing is a gap

log = logging.getLogger("convert")


def series_order(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with each converted series' ``slice_index``, ``position_source``,
    ``duplicate_position`` and ``gap`` columns (module docstring)."""
    manifest = manifest.copy()
    manifest[["slice_index", "position_source"]] = [pd.NA, ""]
    manifest[["duplicate_position", "gap"]] = False
    has_series = manifest["series_uid"].astype(object).fillna("") != ""
    done = manifest[(manifest["status"] == "converted") & has_series]
    for series, rows in done.groupby("series_uid"):
        # A position that is missing, not a number or infinite is no geometry.
        positions = pd.to_numeric(rows["slice_position"], errors="coerce").astype(float).to_numpy()
        if np.isfinite(positions).all():
            order = rows.sort_values(["slice_position", "instance_number", "frame"]).index
            manifest.loc[rows.index, "position_source"] = "position"
            values = np.sort(positions)
            steps = np.diff(values)
            duplicate = np.isclose(positions[:, None], values[None]).sum(1) > 1
            manifest.loc[rows.index, "duplicate_position"] = duplicate
            moving = steps[steps > 1e-3]
            if len(moving):
                median = float(np.median(moving))
                gap_after = values[1:][steps > GAP_FACTOR * median]
                manifest.loc[rows.index, "gap"] = np.isin(positions, gap_after)
        else:
            log.warning(
                "convert: series %s has no slice geometry; sorted by InstanceNumber", series
            )
            order = rows.sort_values(["instance_number", "frame", "source"]).index
            manifest.loc[rows.index, "position_source"] = "instance_number"
        manifest.loc[order, "slice_index"] = range(len(order))
    return manifest
