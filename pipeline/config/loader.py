"""Loading a config: defaults, then a YAML file (with its `_base_` chain), then dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.config.schema import Config
from pipeline.core.errors import CellpipeError, full_message


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what a YAML error is, on one line: `line 3, column 2: expected <block end>, but
    found '<block mapping start>' while parsing a block mapping from line 1`."""
    mark, context_mark = getattr(error, "problem_mark", None), getattr(error, "context_mark", None)
    if mark is None:
        return full_message(error)
    context = getattr(error, "context", None)
    since = f" {context} from line {context_mark.line + 1}" if context and context_mark else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}{since}"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise CellpipeError(f"config {path}: _base_ cycle")
    if not path.is_file():
        raise CellpipeError(f"missing config file: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CellpipeError(f"config {path}: not valid YAML ({_yaml_problem(e)})") from e
    except UnicodeDecodeError as e:
        raise CellpipeError(f"config {path}: not UTF-8 text (byte {e.start})") from e
    if not isinstance(data, dict):
        raise CellpipeError(f"config {path}: expected a mapping at the top level")
    base = data.pop("_base_", None)
    if base is None:
        return data
    return _merge(_read_yaml(path.parent / base, (*seen, path)), data)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["folds.n_folds=3", "work_dir=/tmp/w"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise CellpipeError(f"override {item!r}: expected key.sub=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise CellpipeError(f"override {item!r}: {part} is set twice")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (with its `_base_` chain), then command-line overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = "".join(f" {p}" if i == 0 else f".{p}" for i, p in enumerate(first["loc"]))
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise CellpipeError(f"config{where}: {message}{more}") from e


def dump_yaml(section: BaseModel) -> str:
    """A config block as YAML, paths as strings."""
    return yaml.safe_dump(section.model_dump(mode="json"), sort_keys=False)
