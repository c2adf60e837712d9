"""MUHEAM: a shared-disk database cluster manager."""

__version__ = "0.1.0"
