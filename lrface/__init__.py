"""lrface: face recognition for low-resolution imagery. `lrface.client` is the Python client of the HTTP API."""
__version__ = "0.1.0"
