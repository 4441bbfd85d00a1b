"""Shared fixtures: the reference optics and small, fast banks."""

import numpy as np
import pytest

from lfm_recon import Microscope, generate_psf


@pytest.fixture(scope="session")
def reference() -> Microscope:
    """20x/0.5 NA water, 150 µm / f 3000 µm MLA, 10 µm pixels (nnum 15)."""
    return Microscope.preset("reference")


@pytest.fixture(scope="session")
def small_bank(reference):
    """Three depths, s = 3: quick to build, still off-axis and defocused."""
    return generate_psf(reference, np.array([-20.0, 0.0, 20.0]), 3)


@pytest.fixture
def free_port() -> int:
    """A TCP port free on this machine now, for torchrun's rendezvous (a
    fixed port collides with other test runs on the same machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
