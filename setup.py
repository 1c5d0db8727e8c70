from setuptools import setup

setup(cffi_modules=["native/_build_ring.py:ffibuilder"])
