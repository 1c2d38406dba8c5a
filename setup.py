"""setuptools hook for the cffi extension: pyproject.toml cannot name cffi_modules itself."""

from setuptools import setup

setup(cffi_modules=["pyinit/_syscalls_build.py:ffibuilder"])
