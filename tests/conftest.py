"""Test-wide settings. Set before any test module imports transformers, triton or prefect."""
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prefect: a throwaway home (database, settings, default result storage), no analytics, quiet logs.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="awqflow-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Without a CUDA device the Triton kernels run on Triton's CPU interpreter. The variable is read
# when triton is first imported, and any package import may pull triton in, so it is set here.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny_models.py


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
