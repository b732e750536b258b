"""edge-jepa on-device runtime. Never imports torch (numpy, onnxruntime, pyserial, opencv only)."""

__version__ = "0.1.0"
