"""Camera files as they come: 8/16-bit grey PNG, TIFF frames and stacks, and
the edge cases (colour, palette, alpha, 1-bit, animated) as clear errors.

PNG files are written here by a minimal encoder of the PNG specification
(zlib + CRC chunks), independent of Pillow, which the package reads them with.
"""

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from lfm_recon import LFMError
from lfm_recon.cli import main
from lfm_recon.io import read_frames, read_png
from lfm_recon.recording import Recording


def write_grey_png(path, array: np.ndarray) -> None:
    """A grey PNG (colour type 0) of 8 or 16 bits, rows unfiltered; 16-bit
    samples big-endian as the specification says."""
    h, w = array.shape
    depth = 8 * array.dtype.itemsize
    sample = ">u2" if depth == 16 else "u1"
    raw = b"".join(b"\x00" + array[r].astype(sample).tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))


GREY = [
    pytest.param(np.uint8, 255, id="8-bit"),
    pytest.param(np.uint16, 65535, id="16-bit"),
]


@pytest.mark.parametrize(("dtype", "top"), GREY)
def test_grey_png_reads_the_stored_counts(tmp_path, dtype, top):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, top + 1, (23, 31)).astype(dtype)
    counts[0, :3] = (0, 1, top)  # both ends of the range, and byte order (16-bit: 0x0001)
    write_grey_png(tmp_path / "frame.png", counts)
    frame = read_frames(tmp_path / "frame.png")
    assert frame.dtype == np.float32 and frame.shape == (23, 31)
    np.testing.assert_array_equal(frame, counts.astype(np.float32))
    assert read_png(tmp_path / "frame.png").dtype == dtype
    # By content, not by name; and as a recording input (the reconstruct CLI's).
    (tmp_path / "frame.png").rename(tmp_path / "frame.tif")
    np.testing.assert_array_equal(read_frames(tmp_path / "frame.tif"), frame)
    write_grey_png(tmp_path / "frame.png", counts)
    recording = Recording([tmp_path / "frame.png"])
    assert len(recording) == 1 and recording.frame_shape == (23, 31)
    np.testing.assert_array_equal(recording.read(0, 1)[0], frame)


def test_tiff_frames_and_stacks(tmp_path):
    stack = np.arange(3 * 8 * 9, dtype=np.float32).reshape(3, 8, 9) - 50.5  # 32-bit float
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_frames(tmp_path / "stack.tif"), stack)
    recording = Recording([tmp_path / "stack.tif"])
    assert len(recording) == 3
    np.testing.assert_array_equal(recording.read(1, 3), stack[1:])


def _colour(mode):
    def make(path):
        rng = np.random.default_rng(1)
        rgb = Image.fromarray(rng.integers(0, 255, (12, 10, 3)).astype(np.uint8))
        image = {"RGB": rgb, "RGBA": rgb.convert("RGBA"), "P": rgb.convert("P")}.get(mode)
        if mode == "LA":
            image = rgb.convert("LA")
        if mode == "1":
            image = rgb.convert("1")
        image.save(path)

    return make


def _animated(path):
    frames = [Image.fromarray(np.full((6, 7), v, np.uint8)) for v in (10, 20)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(_colour("RGB"), "is a colour image", id="rgb"),
        pytest.param(_colour("RGBA"), "colour image with an alpha", id="rgba"),
        pytest.param(_colour("P"), "palette", id="palette"),
        pytest.param(_colour("LA"), "grey image with an alpha", id="grey-alpha"),
        pytest.param(_colour("1"), "1-bit", id="1-bit"),
        pytest.param(_animated, "animated PNG of 2 frames", id="animated"),
        pytest.param(lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nbroken"), "cannot read", id="junk"),
    ],
)
def test_png_that_is_not_a_grey_frame_is_a_clear_error(tmp_path, make, message):
    path = tmp_path / "frame.png"
    make(path)
    with pytest.raises(LFMError, match=message) as info:
        read_frames(path, "white frame")
    assert str(path) in str(info.value)
    with pytest.raises(LFMError, match=message):
        Recording([path])


def test_calibrate_cli_takes_png_frames_with_a_one_line_error_for_colour(tmp_path, capsys):
    """The calibrate command reads a 16-bit PNG white frame with a TIFF dark
    frame; a colour PNG ends with one readable line."""
    from lf_frames import white_frame

    white, *_ = white_frame((330, 350), (15.38, 15.38), 0.4, (161.3, 170.8))
    write_grey_png(tmp_path / "white.png", np.round(white).astype(np.uint16))
    tifffile.imwrite(tmp_path / "dark.tif", np.full((330, 350), 100, np.uint16))
    argv = ["calibrate", "--white", str(tmp_path / "white.png"), "--dark"]
    argv += [str(tmp_path / "dark.tif"), "--microscope", "reference", "-q"]
    assert main([*argv, "-o", str(tmp_path / "calib.h5")]) == 0
    _colour("RGB")(tmp_path / "rgb.png")
    argv[2] = str(tmp_path / "rgb.png")
    assert main([*argv, "-o", str(tmp_path / "c2.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lfm-recon: error: ") and err.count("\n") == 1 and "colour" in err
