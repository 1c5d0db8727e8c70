from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = None
    for item in items:
        if "gpu" in item.keywords:
            if gpu is None:
                try:
                    import torch

                    gpu = bool(torch.cuda.is_available())
                except Exception:
                    gpu = False
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def collect_leaked_sockets() -> Iterator[None]:
    """Collect garbage after a test that opens real client sockets, while its warning filters
    still apply: trio-websocket's client leaks its socket when the server closes first or
    refuses the upgrade (a ResourceWarning the modules filter), and collected later it would
    fail whatever test runs next."""
    yield
    gc.collect()
