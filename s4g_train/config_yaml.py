"""Reading training configs from YAML: files (``--preset``, ``--config``, a run's ``config.yaml``) and ``--set``
values.

YAML 1.1 (what PyYAML implements) reads ``on``/``off``/``yes``/``no`` as booleans, so ``train.amp: off`` would
reach the config as ``False``. :func:`yaml_load` is PyYAML's safe loader with YAML 1.2's booleans (only
``true``/``false``); the YAML 1.1 words arrive as :class:`Yaml11Bool`, a string that remembers the boolean
PyYAML would have made of it. The config layer (:func:`s4g_train.config.apply_dict`) then gives a string field
the word (``off`` means ``off``), a boolean field the boolean (``train.compile: yes`` still means true) and
untyped values (``data.synth.options``) the boolean, as before (:func:`untyped`). Quoted words stay strings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from s4g_engine.errors import FormatError, MissingFileError

__all__ = ["Yaml11Bool", "yaml_load", "untyped", "load_yaml"]


class Yaml11Bool(str):
    """A YAML 1.1 boolean word (``on``, ``Off``, ``yes``, ``NO`` …) kept as written, with its boolean value."""

    value: bool

    def __new__(cls, text: str, value: bool) -> Yaml11Bool:
        obj = super().__new__(cls, text)
        obj.value = value
        return obj


_TRUE_FALSE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML11_WORDS = {w: v for v, words in ((True, ("yes", "on")), (False, ("no", "off")))
                 for word in words for w in (word, word.capitalize(), word.upper())}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans (only true/false); on/off/yes/no → :class:`Yaml11Bool`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _TRUE_FALSE, list("tTfF"))


def _construct_str(loader: _Loader, node: yaml.Node) -> str:
    text = loader.construct_scalar(node)  # type: ignore[arg-type]
    if isinstance(node, yaml.ScalarNode) and node.style is None and text in _YAML11_WORDS:
        return Yaml11Bool(text, _YAML11_WORDS[text])  # plain (unquoted) on/off/yes/no
    return str(text)


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def yaml_load(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, except that on/off/yes/no stay words until a field's type decides."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def untyped(value: Any) -> Any:
    """YAML 1.1 boolean words inside untyped values (mappings, ``Any``) become booleans, as PyYAML reads them."""
    if isinstance(value, Yaml11Bool):
        return value.value
    if isinstance(value, dict):
        return {k: untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untyped(v) for v in value]
    return value


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise MissingFileError(f"config file {str(p)!r} {what}; expected a YAML file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is fine
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"{p}:{line}: expected UTF-8 text, got byte 0x{data[exc.start]:02x} (Latin-1?); "
                          "re-save the file as UTF-8") from None
    try:
        d = yaml_load(text) or {}
    except yaml.YAMLError as exc:
        raise FormatError(f"{p}: not valid YAML: {exc}") from exc
    if not isinstance(d, dict):
        raise FormatError(f"{p}: expected a mapping at the top level, got {type(d).__name__}")
    return d
