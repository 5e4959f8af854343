"""One source of a denoiser's defaults: its ``properties/denoiser/<Name>.yaml``, read into one typed settings object.

The property file declares each key once, with its default and a comment; the Config layers it under the
user's keys (README "Configuration layers"). :meth:`DenoiserSettings.from_config` reads the resolved values
into a frozen dataclass whose fields are those keys and have no defaults of their own, so no default is
written twice; its ``__post_init__`` checks what the generic checks of ``config.py`` (types and ranges taken
from the property files) cannot know, raising :class:`~recbole_denoise.errors.ConfigError` naming the key. A
denoiser builds its settings once, in ``__init__``, and reads ``self.settings.<key>`` afterwards, so a bad
value stops the stage before a model is loaded.

``~`` (None) set by the user on a key whose file gives a value means the built-in behaviour, as everywhere
(README "Errors and recovery"): that file's value, read from the file itself. A key absent from the resolved
config is not a user mistake but a programming or packaging one (the Config was built without the denoiser's
property file), and raises :class:`LookupError` saying so.
"""
import dataclasses
import functools
import os
import types

import yaml

from recbole_denoise import resources


@functools.lru_cache(maxsize=None)
def property_defaults(name):
    """``{key: default}`` of ``properties/denoiser/<name>.yaml``, parsed as RecBole parses a yaml layer."""
    from recbole.config import Config as RecBoleConfig

    path = os.path.join(resources.properties_dir(), "denoiser", f"{name}.yaml")
    with open(path, encoding="utf-8") as f:
        values = yaml.load(f.read(), Loader=RecBoleConfig._build_yaml_loader(None)) or {}
    return types.MappingProxyType(values)


class DenoiserSettings:
    """Base of a denoiser's settings: subclass it with a frozen ``@dataclass`` whose fields are config keys
    (annotated with their type, without defaults) and set ``property_file`` to the denoiser's name."""

    property_file = None  # <name> of properties/denoiser/<name>.yaml, the one source of the defaults

    @classmethod
    def from_config(cls, config):
        """The settings of a resolved Config (or any mapping with ``in`` and ``[]``), checked once."""
        defaults = property_defaults(cls.property_file)
        where = f"properties/denoiser/{cls.property_file}.yaml"
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name
            if key not in defaults:
                raise LookupError(f"{cls.__name__}.{key} is not declared in {where}: every setting needs its "
                                  f"default there")
            if key not in config:
                raise LookupError(f"{cls.__name__}: key '{key}' is not in the config: build the Config with "
                                  f"denoiser='{cls.property_file}' so that {where} is one of its layers")
            value = config[key]
            if value is None:
                value = defaults[key]
            if field.type in (tuple, "tuple") and isinstance(value, list):
                value = tuple(value)
            values[key] = value
        return cls(**values)

    @classmethod
    def shared_keys(cls):
        """Keys of the property file that are not fields: read by the stage from the config (the decision
        keys, ``denoisers/base.py`` ``BASE_KEYS``), not by the denoiser."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return tuple(k for k in property_defaults(cls.property_file) if k not in fields)
