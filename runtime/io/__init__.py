"""Data files: record stores (kvfile, textfile) and dataset importers.

    from runtime.io import open_store
    with open_store("examples/mnist/train_data.bin") as store:   # kvfile
        key, value = store.read()

Importing the package registers every backend in `store_registry`.
"""
from runtime.io import kvfile as _kvfile  # noqa: F401  (registers "kvfile")
from runtime.io import textfile as _textfile  # noqa: F401  (registers "textfile")
from runtime.io.store import Store, atomic_output, open_store, store_registry

__all__ = ["Store", "open_store", "store_registry", "atomic_output"]
