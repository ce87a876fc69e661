"""Reference server for the ekoclient SDK: a real ekoDB-compatible backend for tests and demos."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
