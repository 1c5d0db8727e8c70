from __future__ import annotations

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
