"""Maintainer tools of the bundle (not used by its configs): :mod:`tools.zoo_package` writes the model-zoo
submission folder; :mod:`tools.import_graph` reads which ``scripts`` modules each module imports (for it and for
tests/test_import_layers.py)."""
