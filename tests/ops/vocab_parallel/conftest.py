import pytest

from _vp_pool import RankPool


@pytest.fixture(scope="session")
def ranks():
    """Two gloo ranks shared by the vocab-parallel tests."""
    pool = RankPool(world=2)
    yield pool
    pool.close()
