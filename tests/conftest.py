import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# tests see the shipped zoo plus an empty user zoo, never the models a developer imported
os.environ["MEDLEARN_ZOO"] = tempfile.mkdtemp(prefix="medlearn-test-zoo-")


@pytest.fixture(scope="session")
def tiny_cardiac(tmp_path_factory):
    from helpers import tiny_cardiac_checkpoint

    return tiny_cardiac_checkpoint(tmp_path_factory.mktemp("models"))


def pytest_configure(config):
    # one torch thread: tests are tiny, and a second busy-waiting thread pool on a 2-core
    # machine slows everything else running beside the suite
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
