"""Model resolution: our models first (``recbole_denoise.model.sequential_recommender``), RecBole's otherwise."""
import importlib
import pkgutil

from recbole.utils import get_model as _recbole_get_model

from recbole_denoise.errors import ConfigError


def our_models():
    """Names of the models this package adds (one module per model, class name = model name)."""
    from recbole_denoise.model import sequential_recommender as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        names += [n for n in getattr(module, "__all__", []) if n.lower() == info.name]
    return sorted(names)


def recbole_sequential_models():
    import recbole.model.sequential_recommender as seq

    return sorted(n for n in dir(seq) if isinstance(getattr(seq, n), type) and not n.startswith("_"))


def get_model(name):
    """Return the model class for ``name``: one of ours, a RecBole model, or a ``package.module.Class`` path."""
    if not isinstance(name, str):
        return name
    if "." in name:
        module_name, _, cls = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), cls)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model '{name}': cannot import class '{cls}' from '{module_name}' ({e})") from None
    from recbole_denoise.model import sequential_recommender as pkg

    module_path = f"{pkg.__name__}.{name.lower()}"
    if importlib.util.find_spec(module_path) is not None:
        module = importlib.import_module(module_path)
        if hasattr(module, name):
            return getattr(module, name)
    try:
        return _recbole_get_model(name)
    except (ValueError, ImportError):  # RecBole probes exlib_recommender (lightgbm) for unknown names
        raise ConfigError(
            f"Unknown model '{name}' (key 'model'). Ours: {our_models() or 'none yet'}; "
            f"RecBole sequential models: {', '.join(recbole_sequential_models())}; "
            f"or give a 'package.module.Class' path."
        ) from None
