"""The package version: one place, read by pyproject.toml (setuptools dynamic attr) and both packages."""
__version__ = "0.2.0"
