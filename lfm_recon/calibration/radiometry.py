"""Radiometry: the per-lenslet flat field from a white frame.

Notation:
    rectified white  float (ny·nnum, nx·nnum): the white frame minus the dark
                     frame, rectified (:mod:`.rectification`); counts.
    block (i, j)     its nnum × nnum pixels of lenslet (i, j): rows
                     i·nnum … (i+1)·nnum − 1, columns j·nnum … (j+1)·nnum − 1.
    transmission     t(i, j) = Σ block (i, j) / median over lenslets of Σ block;
                     dimensionless, 1 for a typical lenslet.

The flat field is one number per rectified lenslet, t(i, j) (:func:`lenslet_transmission`).
Rectified frames are divided by it block by block, so the rectified image of
the white sample itself becomes exactly uniform per lenslet (vignetting and
lenslet-to-lenslet transmission corrected) while the pattern *inside* each
lenslet, the pupil image that the PSF model already predicts, is kept. Being
per lenslet, it never divides by the near-zero gaps between spots; lenslets
with under ``FLAT_FLOOR`` of the median light (outside the illuminated field)
are corrected as if they had that much, so their noise is amplified at most
20×.
"""

from __future__ import annotations

import numpy as np

from ..errors import LFMError

FLAT_FLOOR = 0.05  # smallest relative lenslet transmission the flat field divides by


def lenslet_transmission(rectified_white: np.ndarray, nnum: int) -> np.ndarray:
    """Relative transmission of each lenslet: the flat field.

    Args:
        rectified_white: float (ny·nnum, nx·nnum), the rectified white frame
            minus dark.
        nnum: rectified pixels per lenslet.

    Returns:
        float32 (ny, nx): each block's sum over the median block sum, at least
        ``FLAT_FLOOR``. Divide rectified frames by it block by block (see the
        module doc for why per lenslet).
    """
    ny, nx = rectified_white.shape[0] // nnum, rectified_white.shape[1] // nnum
    sums = rectified_white.reshape(ny, nnum, nx, nnum).sum(axis=(1, 3), dtype=np.float64)
    reference = float(np.median(sums))
    if not reference > 0:
        raise LFMError(
            "the white frame minus the dark frame has no light in its lenslets; check that"
            " the white frame is not the dark frame and the dark frame is from the same camera"
        )
    return np.maximum(sums / reference, FLAT_FLOOR).astype(np.float32)
