"""Build script: cythonizes store/_index.pyx.

MAILHOUSE_PURE_PYTHON=1 skips the extension (the pure-Python index is used);
MAILHOUSE_REQUIRE_EXT=1 turns a failed build into an error (CI sets it).
"""
import os

from setuptools import setup

ext_modules = []
if not os.environ.get("MAILHOUSE_PURE_PYTHON"):
    try:
        from Cython.Build import cythonize
        ext_modules = cythonize(
            ["store/_index.pyx"], language_level=3, compiler_directives={"boundscheck": False, "wraparound": False}
        )
    except Exception:
        if os.environ.get("MAILHOUSE_REQUIRE_EXT"):
            raise
        ext_modules = []

setup(ext_modules=ext_modules)
