"""samlib: sharpness-aware minimization seen through preconditioning.

The library behind the course. ``samlib.optim`` holds the optimizers; the rest is the
experiment kit the chapters use.
"""
__version__ = "0.1.0"
