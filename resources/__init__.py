"""Bundled model, model card and icons; installed as ``viewer.resources``."""
