"""Library code of the lung CT pipeline: pure functions on arrays, used by `stages/`.

``__version__`` is the software's version, its one home (``pyproject.toml``'s ``version``
must equal it: ``tests/test_version.py``); a model's version is built from it
(:func:`lungct.contract.model_version`)."""

__version__ = "0.1.0"
