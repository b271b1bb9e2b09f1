import pytest


@pytest.fixture(params=["cpu-kernels", "sort"])
def backend(request):
    """The counting backend to pass to the estimator: the numba CPU kernels or the device-agnostic sort."""
    return request.param
