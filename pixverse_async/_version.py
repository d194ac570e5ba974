"""The package version, in one place: `__version__` and the User-Agent both read it."""

__version__ = "0.1.0"
