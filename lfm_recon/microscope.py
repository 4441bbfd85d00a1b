"""The microscope description: one validated object for the API, CLI and files.

All lengths are in micrometres (µm), the wavelength too (vacuum). The
``pixel_size`` is that of the *rectified* light-field image, exactly
``mla_pitch / nnum``: a raw camera whose pixels see a non-integer number per
lenslet must be calibrated and rectified first (the raw pixel size belongs to
the calibration).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import LFMError

_NNUM_TOLERANCE = 1e-3  # relative: pitch/pixel may be off an integer by 0.1 %
_WAVELENGTH_RANGE = (0.1, 10.0)  # µm


@dataclass(frozen=True)
class Microscope:
    """A light-field microscope (MLA at the native image plane).

    Attributes:
        magnification: objective + tube lens magnification M (> 0).
        numerical_aperture: objective NA, below ``medium_index``.
        medium_index: refractive index n of the immersion/sample medium.
        wavelength: emission wavelength in vacuum, µm (e.g. 0.525).
        mla_pitch: microlens pitch, µm.
        mla_focal_length: microlens focal length, µm.
        pixel_size: rectified sensor pixel, µm; ``mla_pitch / pixel_size`` must
            be an integer (``nnum``). Within 0.1 % of one it is snapped to
            exactly ``mla_pitch / nnum`` (so 6.67 µm with a 100 µm pitch
            becomes 100/15).
        tube_lens_focal_length: optional, µm; informational (the intensity
            PSF depends on M only, not on the split into objective and tube).
        sensor_distance: optional MLA-to-sensor distance, µm; defaults to
            ``mla_focal_length`` (the standard LFM).

    Example:
        >>> m = Microscope(magnification=20, numerical_aperture=0.5,
        ...                medium_index=1.33, wavelength=0.525, mla_pitch=150.0,
        ...                mla_focal_length=3000.0, pixel_size=10.0)
        >>> m.nnum, m.lenslet_pitch_object
        (15, 7.5)
    """

    magnification: float
    numerical_aperture: float
    medium_index: float
    wavelength: float
    mla_pitch: float
    mla_focal_length: float
    pixel_size: float
    tube_lens_focal_length: float | None = None
    sensor_distance: float | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise LFMError(f"microscope {f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise LFMError(
                    f"microscope {f.name} must be a positive finite number"
                    f" (µm for lengths), got {value!r}"
                )
            object.__setattr__(self, f.name, float(value))
        if self.medium_index < 1.0:
            raise LFMError(
                f"medium_index {self.medium_index} is below 1 (vacuum); give the"
                " refractive index of the immersion medium, e.g. 1.33 for water"
            )
        if self.numerical_aperture >= self.medium_index:
            raise LFMError(
                f"numerical_aperture {self.numerical_aperture} must be below"
                f" medium_index {self.medium_index} (NA = n·sin α < n); check"
                " the objective's NA and its immersion medium"
            )
        lo, hi = _WAVELENGTH_RANGE
        if not lo <= self.wavelength <= hi:
            guess = self.wavelength / 1000 if self.wavelength > hi else self.wavelength * 1e6
            raise LFMError(
                f"wavelength {self.wavelength:g} is not an optical wavelength in µm"
                f" ({lo:g}…{hi:g}); wavelengths are in µm (did you mean {guess:g}?)"
            )
        ratio = self.mla_pitch / self.pixel_size
        nnum = round(ratio)
        if nnum < 1 or abs(ratio - nnum) > _NNUM_TOLERANCE * nnum:
            raise LFMError(
                f"mla_pitch / pixel_size = {self.mla_pitch:g} / {self.pixel_size:g}"
                f" = {ratio:.4f} pixels per lenslet, not an integer; the"
                " operator needs an integer grid: calibrate and rectify the raw"
                " images to nnum pixels per lenslet and give the rectified pixel size,"
                f" e.g. pixel_size = {self.mla_pitch / max(nnum, 1):.6g}"
                f" for nnum = {max(nnum, 1)} (or write nnum = {max(nnum, 1)}"
                " in the TOML file)"
            )
        object.__setattr__(self, "pixel_size", self.mla_pitch / nnum)

    # --- derived quantities -------------------------------------------------
    @property
    def nnum(self) -> int:
        """Sensor pixels per lenslet along each axis."""
        return round(self.mla_pitch / self.pixel_size)

    @property
    def lenslet_pitch_object(self) -> float:
        """Lenslet pitch projected into the sample, µm (mla_pitch / M)."""
        return self.mla_pitch / self.magnification

    @property
    def mla_to_sensor(self) -> float:
        """Distance from the MLA to the sensor, µm."""
        return self.sensor_distance or self.mla_focal_length

    @property
    def image_side_na(self) -> float:
        """NA of the beam at the native image plane (NA / M)."""
        return self.numerical_aperture / self.magnification

    @property
    def lenslet_na(self) -> float:
        """NA of one lenslet (pitch / (2 f_ml)); matched LFMs have it equal to
        ``image_side_na``."""
        return self.mla_pitch / (2 * self.mla_focal_length)

    def voxel_size(self, voxels_per_lenslet: int) -> float:
        """Lateral voxel size in the sample, µm, for s voxels per lenslet."""
        return self.lenslet_pitch_object / voxels_per_lenslet

    # --- serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, float]:
        """Plain dict of the defining fields (None fields left out)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "microscope") -> Microscope:
        """Build from a dict; ``nnum`` may replace ``pixel_size``.

        Unknown keys are rejected with the list of allowed ones.
        """
        values = dict(values)
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - allowed - {"nnum"})
        if unknown:
            raise LFMError(
                f"{source}: unknown key(s) {unknown}; allowed keys are {sorted(allowed | {'nnum'})}"
            )
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise LFMError(f"{source}: {key} must be a number, got {value!r}")
        if "nnum" in values:
            nnum = values.pop("nnum")
            if not isinstance(nnum, numbers.Integral) or nnum < 1:
                raise LFMError(f"{source}: nnum must be a positive integer, got {nnum!r}")
            if "mla_pitch" not in values:
                raise LFMError(f"{source}: nnum needs mla_pitch to derive pixel_size")
            derived = values["mla_pitch"] / nnum
            given = values.setdefault("pixel_size", derived)
            if abs(given - derived) > _NNUM_TOLERANCE * derived:
                raise LFMError(
                    f"{source}: pixel_size {given} contradicts nnum {nnum}"
                    f" (mla_pitch / nnum = {derived:.6g}); give only one"
                )
        required = [f.name for f in dataclasses.fields(cls) if f.default is not None]
        missing = [name for name in required if name not in values]
        if missing:
            raise LFMError(f"{source}: missing required key(s) {missing}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> Microscope:
        """Read a TOML file of ``key = value`` lines (µm); see psf/presets."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise LFMError(f"cannot read microscope file {path}: {exc.strerror}") from exc
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise LFMError(f"{path} is not valid TOML: {exc}") from exc
        values.pop("description", None)
        return cls.from_dict(values, source=str(path))

    def to_toml(self, description: str | None = None) -> str:
        """TOML text that :meth:`from_file` reads back exactly."""
        lines = ["# lfm_recon microscope; lengths in µm, wavelength in µm (vacuum)"]
        if description:
            lines.append(f"description = {_toml_string(description)}")
        lines += [f"{k} = {v!r}" for k, v in self.to_dict().items()]
        lines.append(f"# nnum = {self.nnum} pixels per lenslet")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path, description: str | None = None) -> None:
        """Write :meth:`to_toml` to ``path``."""
        Path(path).write_text(self.to_toml(description), encoding="utf-8")

    @classmethod
    def preset(cls, name: str) -> Microscope:
        """A named preset from ``psf/presets`` (see :func:`list_presets`)."""
        return cls.from_file(_preset_path(name))

    @classmethod
    def resolve(cls, preset_or_path: str | Path) -> Microscope:
        """A preset name, or the path of a TOML file."""
        path = Path(preset_or_path)
        if path.suffix == ".toml" or path.exists():
            if not path.exists():
                raise LFMError(f"microscope file {path} does not exist")
            return cls.from_file(path)
        return cls.preset(str(preset_or_path))

    def describe(self) -> str:
        """Several human-readable lines, with the derived quantities."""
        return "\n".join(
            [
                f"objective   {self.magnification:g}x / NA {self.numerical_aperture:g},"
                f" n = {self.medium_index:g}, λ = {self.wavelength * 1000:g} nm",
                f"MLA         pitch {self.mla_pitch:g} µm, f = {self.mla_focal_length:g} µm,"
                f" sensor at {self.mla_to_sensor:g} µm"
                f" (lenslet NA {self.lenslet_na:.4g} vs image-side NA"
                f" {self.image_side_na:.4g})",
                f"sensor      {self.pixel_size:.6g} µm pixels, nnum = {self.nnum}",
                f"object      lenslet pitch {self.lenslet_pitch_object:.6g} µm",
            ]
        )


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _presets_dir():
    return resources.files("lfm_recon") / "presets"


def list_presets() -> dict[str, str]:
    """Preset names mapped to their one-line description."""
    out = {}
    for entry in sorted(_presets_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text(encoding="utf-8"))
            out[entry.name[: -len(".toml")]] = data.get("description", "")
    return out


def _preset_path(name: str):
    entry = _presets_dir() / f"{name}.toml"
    if not entry.is_file():
        names = ", ".join(list_presets())
        raise LFMError(
            f"no microscope preset or file named {name!r}; presets: {names}"
            " (or give the path of a .toml file)"
        )
    return entry
