"""Fixtures of the model tests."""

import pytest

from video_swin.models.kernels import accelerate_cpu


@pytest.fixture(params=["reference", "accelerated"])
def seam(request):
    """Applies ``accelerate_cpu`` (or not) to a model: parity tests hold with the CPU fast paths on and off."""
    return lambda model: accelerate_cpu(model, enabled=request.param == "accelerated")
