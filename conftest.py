"""Run everything pytest collects, the notebooks included, in quick mode unless told otherwise."""
import os

os.environ.setdefault("SAMLIB_MODE", "quick")
