"""Packaging entry point. Metadata lives in pyproject.toml; this file exists for the native
extension build (torch.utils.cpp_extension), which later work adds behind
MAT_FAST_BUILD_EXT=1 so that a plain install never needs a compiler."""

from setuptools import setup

setup()
