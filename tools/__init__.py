"""Maintainer tools of the bundle (not used by its configs): :mod:`tools.zoo_package` writes the model-zoo
submission folder."""
