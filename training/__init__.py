"""edge-jepa desktop side: datasets, world models, JEPA objectives, trainer, export (imports torch)."""
