"""Shared fixtures of the end-to-end tests: a small random-weight bundle, exported with the
repository's own exporter (plumbing and safety tests; goal-reaching needs models/default)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _native_built() -> bool:
    from firmware_bridge import native

    try:
        native.core_library()
        return True
    except FileNotFoundError:
        return False


requires_native = pytest.mark.skipif(not _native_built(), reason="firmware core not built: cmake -S . -B build/native "
                                                                  "&& cmake --build build/native")


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory) -> Path:
    """A random-weight sensor model (E=16) with a small fused planner (N=32, H=8, J=2), fp32."""
    import torch

    from training.export import ExportConfig, PlannerParams, export_bundle
    from training.models import Predictor, SensorEncoder

    torch.manual_seed(0)
    enc = SensorEncoder(embed_dim=16, hidden=32, depth=1)
    pred = Predictor(embed_dim=16, hidden=32, layers=1, conf_hidden=8)
    out = tmp_path_factory.mktemp("e2e_bundle") / "random"
    return export_bundle(enc, pred, PlannerParams(N=32, H=8, J=2), out, ExportConfig(precisions=("fp32",)),
                         training_metrics={"val_pred": 0.05}, command="tests/e2e random bundle", progress=False)
