"""A tiny real bundle (random-weight sensor model, small planner) for backend and cache tests."""

from __future__ import annotations

from pathlib import Path

E, HIDDEN, N, H, J = 8, 16, 16, 4, 2


def make_tiny_bundle(out: Path, precisions: tuple[str, ...] = ("fp32", "int8"), seed: int = 0) -> Path:
    """Export a random-weight SensorEncoder + Predictor with N=16, H=4, J=2 to ``out`` (a few seconds)."""
    import torch

    from training.export import ExportConfig, PlannerParams, export_bundle
    from training.models import Predictor, SensorEncoder

    torch.manual_seed(seed)
    enc = SensorEncoder(embed_dim=E, hidden=HIDDEN, depth=1)
    pred = Predictor(embed_dim=E, hidden=HIDDEN, layers=1, conf_hidden=8)
    return export_bundle(enc, pred, PlannerParams(N=N, H=H, J=J), out, ExportConfig(precisions=precisions, calib_windows=8),
                         command="tests: make_tiny_bundle", progress=False)


def tiny_models(seed: int = 0):
    """The same random-weight models as :func:`make_tiny_bundle` (for torch comparisons)."""
    import torch

    from training.models import Predictor, SensorEncoder

    torch.manual_seed(seed)
    enc = SensorEncoder(embed_dim=E, hidden=HIDDEN, depth=1).eval()
    pred = Predictor(embed_dim=E, hidden=HIDDEN, layers=1, conf_hidden=8).eval()
    return enc, pred


_MADE: dict[tuple[str, ...], Path] = {}


def shared_tiny_bundle(tmp_path_factory, precisions: tuple[str, ...] = ("fp32", "int8", "fp16")) -> Path:
    """One export per test session (memoised); tests that modify a bundle must copy it first."""
    if precisions not in _MADE:
        _MADE[precisions] = make_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle") / "tiny", precisions)
    return _MADE[precisions]
