"""Fixtures shared by several test modules (each module-scoped: made once per module that uses it)."""

import pytest

from tests._bundle import ROOT, tiny_checkpoint
from tests._inputs import SHAPE


@pytest.fixture(scope="module")
def venv_dir():
    """The MONAI Label server's virtual environment (``apps/server.py``), made once; the test skips without it."""
    from apps import server

    try:
        return server.setup(quiet=True)
    except (RuntimeError, OSError) as e:
        pytest.skip(f"the MONAI Label server environment could not be made: {e}")


@pytest.fixture(scope="module")
def arrays():
    """One tiny phantom case (:data:`tests._inputs.SHAPE`): int16 modalities and a uint8 ``seg``."""
    import numpy as np

    from scripts.synthetic.phantom import generate_case

    case = generate_case(1, seed=0, shape=SHAPE)
    return {k: (v.astype(np.uint8) if k == "seg" else v.astype(np.int16)) for k, v in case.items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Untrained weights of the configs' network with the tiny channels (:data:`tests._inputs.TINY`)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def preprocessing():
    """train.json's ``preprocessing_transforms`` as one ``Compose``."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT)})
    return Compose(parser.get_parsed_content("preprocessing_transforms"))
