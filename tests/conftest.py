"""Test setup: Triton's interpreter on the CPU, and state kept in a temporary folder."""

import os
import sys
import tempfile
from pathlib import Path

# Must be set before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Cached task results (evaluations) stay with the test run, never in the user's Prefect home.
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="kevolve-test-results-"))

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Each test gets its own state folder, never the user's."""
    monkeypatch.setenv("KEVOLVE_HOME", str(tmp_path / "kevolve-home"))
    yield


@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """Every text the hashing embedding embeds during the test, in order."""
    from kevolve.knowledge.embedding import HashingEmbedding

    texts: list[str] = []
    embed = HashingEmbedding.__call__

    def counting(self, input):
        texts.extend(input)
        return embed(self, input)

    monkeypatch.setattr(HashingEmbedding, "__call__", counting)
    return texts


def run_cli(*args: str, cwd: Path | None = None, env_overrides: dict[str, str] | None = None):
    """Run `kevolve ARGS` in a fresh interpreter, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "kevolve", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env_overrides or {})},
                          timeout=600)
