"""Library code of the lung CT pipeline: pure functions on arrays, used by `stages/`."""
