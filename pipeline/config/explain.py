"""What a config key is: its type, default, value and description, read from the schema."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter

from pipeline.config.schema import Config
from pipeline.core.errors import CellpipeError


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One field of a config block: its type and description."""

    annotation: Any
    description: str


def _is_block(kind: Any) -> bool:
    return isinstance(kind, type) and (
        issubclass(kind, BaseModel) or dataclasses.is_dataclass(kind)
    )


def block_keys(block: type) -> dict[str, KeyInfo]:
    """The fields of a config block class (a pydantic model or a dataclass), in order; a field a
    subclass overrides keeps the description its base gives it."""
    if dataclasses.is_dataclass(block):
        hints = typing.get_type_hints(block)
        return {
            f.name: KeyInfo(hints[f.name], f.metadata.get("description", ""))
            for f in dataclasses.fields(block)
        }
    keys = {}
    for name, field in block.model_fields.items():
        described = (
            base.model_fields[name].description
            for base in block.__mro__
            if isinstance(base, type) and issubclass(base, BaseModel) and name in base.model_fields
        )
        description = next((d for d in described if d), "")
        keys[name] = KeyInfo(field.annotation, description)
    return keys


def every_key(block: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a block, blocks and their fields alike."""
    out = []
    for name, info in block_keys(block).items():
        out.append(prefix + name)
        if _is_block(info.annotation):
            out += every_key(info.annotation, f"{prefix}{name}.")
    return out


def _type_name(kind: Any) -> str:
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    return re.sub(r"\b(?:[a-z_][a-z0-9_]*\.)+", "", text)  # typing.Literal -> Literal


def _yaml(value: Any) -> str:
    plain = TypeAdapter(Any).dump_python(value, mode="json")
    text = yaml.safe_dump(plain, default_flow_style=True, width=10**6, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def explain(cfg: Config, key: str) -> str:
    """A key's type, default (its value without a config file or overrides), value in `cfg` and
    description; for a block, its docstring and its keys one per line, with values and meanings."""
    block: type = Config
    value: Any = cfg
    default: Any = Config()
    info = None
    for part in key.split("."):
        keys = block_keys(block) if _is_block(block) else {}
        if part not in keys:
            closest = difflib.get_close_matches(key, every_key(), n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(closest)}" if closest else "; see `cellpipe config`"
            raise CellpipeError(f"unknown config key {key!r}{hint}")
        info, block = keys[part], keys[part].annotation
        value, default = getattr(value, part), getattr(default, part)
    if _is_block(block):
        lines = [f"{key}: {inspect.cleandoc(block.__doc__ or '')}"]
        lines += [
            f"  {name} = {_yaml(getattr(value, name))}"
            + (f"  # {sub.description}" if sub.description else "")
            for name, sub in block_keys(block).items()
        ]
        return "\n".join(lines)
    return "\n".join(
        [
            key,
            f"  type: {_type_name(info.annotation)}",
            f"  default: {_yaml(default)}",
            f"  value: {_yaml(value)}",
            f"  {info.description or '(no description)'}",
        ]
    )
