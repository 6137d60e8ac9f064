"""The neural net: the Layer base, one module per layer family, and the
NeuralNet builder. Importing this package registers every built-in layer."""
import importlib
import pkgutil

# Every module in this package defines layers that register themselves where
# they are defined; import them all so the registry is complete.
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

from runtime.neuralnet.layer import Layer, create_layer, layer_registry  # noqa: E402

__all__ = ["Layer", "create_layer", "layer_registry"]
