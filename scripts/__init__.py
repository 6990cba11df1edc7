"""Build and CI helpers run from the repository root (``python scripts/<name>.py``)."""
