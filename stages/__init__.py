"""The commands: one module per DVC stage (download, convert, split, cv, train, evaluate,
export), each run as ``python -m stages.<name>``; ``predict`` and ``serve``, run by hand."""
