import pytest

import ktae.core.estimator as estimator


@pytest.fixture(params=["cpu-kernels", "sort"])
def backend(request, monkeypatch):
    """Run a test on both counting backends: the numba CPU kernels and the device-agnostic sort."""
    monkeypatch.setattr(estimator, "USE_CPU_KERNELS", request.param == "cpu-kernels")
    return request.param
