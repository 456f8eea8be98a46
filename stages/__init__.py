"""The commands: one module per DVC stage (download, convert, split, train, evaluate),
each run as ``python -m stages.<name>``, and ``predict``, run by hand on new files."""
