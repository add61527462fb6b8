"""mat_fast's version: a leaf module, so that any module can import it without importing the
package (``from .version import __version__``)."""

__version__ = "0.1.0"
