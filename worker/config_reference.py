"""The configuration reference, generated from the attrs config classes into docs/configuration.md.

Every attrs field of the configuration classes carries ``metadata={"doc": ...}``; this module
walks the classes with :func:`attrs.fields` (nested config classes become dotted keys) and writes
one table between the ``BEGIN GENERATED`` / ``END GENERATED`` markers of the page. A test fails
when the committed block differs from what the classes generate, so the page cannot drift.

Optional field metadata: ``"key"`` (the YAML key, when it differs from the field name),
``"default_doc"`` (a default that is computed at run time, described in words) and ``"check"``
(the validator of the raw value; its ``description``, e.g. "an integer in 1..65535", is shown
as the accepted values instead of the bare Python type).

``python -m worker.config_reference`` rewrites the block; ``--check`` only compares.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = [
    "BEGIN_MARKER",
    "DEFAULT_PAGE",
    "DEFAULT_ROOT",
    "END_MARKER",
    "SPIDER_KEYS",
    "ConfigKey",
    "MissingDocError",
    "collect_keys",
    "load_root",
    "main",
    "render_table",
    "replace_block",
]

BEGIN_MARKER: Final = "<!-- BEGIN GENERATED: config keys -->"
END_MARKER: Final = "<!-- END GENERATED: config keys -->"
DEFAULT_PAGE: Final = Path("docs/configuration.md")
#: ``module:class`` of the top-level configuration class.
DEFAULT_ROOT: Final = "worker.config:WorkerConfig"

#: Keys of Spider's own worker configuration (protocol.md section 9.1); every other key is ours.
SPIDER_KEYS: Final = frozenset(
    {
        "storage",
        "storage.host",
        "storage.port",
        "scheduler",
        "scheduler.host",
        "scheduler.port",
        "connection_pool_size",
        "scheduler_poll_wait_ms",
        "liveness",
        "liveness.storage_heartbeat_interval_sec",
        "liveness.scheduler_heartbeat_interval_sec",
        "task_executor",
        "task_executor.package_dir",
        "task_executor.bin_path",
        "task_executor.max_log_line_bytes",
        "task_executor.inherited_env",
    }
)


@attrs.frozen(slots=True)
class ConfigKey:
    """One row of the reference: a dotted key and what the classes say about it."""

    key: str
    type_text: str
    required: bool
    default_text: str
    doc: str
    is_block: bool


class MissingDocError(ValueError):
    """A configuration field has no ``metadata["doc"]``: every key must be documented."""


def _attrs_class(annotation: Any) -> type | None:
    """The attrs class in ``annotation`` (``X`` or ``X | None``), else ``None``."""
    if isinstance(annotation, type) and attrs.has(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(members) == 1:
            return _attrs_class(members[0])
    return None


def _type_text(annotation: Any) -> str:
    """A reader's name for a field type: ``int``, ``list of str``, ``"a" | "b"``, ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(f'"{arg}"' if isinstance(arg, str) else repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in args)
    if origin in (list, tuple, frozenset, set, Sequence):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_text(args[0])} to {_type_text(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(f'"{member.value}"' for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    if annotation is float:
        return "number"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _value_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _value_text(value.value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, list | tuple | frozenset | set):
        return "[" + ", ".join(_value_text(item) for item in value) + "]"
    return str(value)


def _default(field: attrs.Attribute[Any]) -> tuple[bool, Any]:
    """``(required, default value)``; factories are called (they build plain defaults)."""
    default: Any = field.default
    if default is attrs.NOTHING:
        return True, None
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory: Any = default.factory
        return False, factory(None) if default.takes_self else factory()
    return False, default


def collect_keys(cls: type, prefix: str = "") -> list[ConfigKey]:
    """Every key of ``cls`` and of the config classes nested in it, in declaration order."""
    hints = typing.get_type_hints(cls)
    keys: list[ConfigKey] = []
    for field in attrs.fields(cls):
        key = prefix + str(field.metadata.get("key", field.name))
        doc = field.metadata.get("doc")
        if not doc:
            raise MissingDocError(f"{cls.__qualname__}.{field.name} ({key}) has no metadata doc")
        annotation = hints.get(field.name, field.type)
        required, default = _default(field)
        nested = _attrs_class(annotation)
        default_text = str(field.metadata.get("default_doc", ""))
        if not default_text:
            if required:
                default_text = "required"
            elif nested is not None:
                default_text = "unset" if default is None else "optional"
            else:
                default_text = _value_text(default)
        check_text = getattr(field.metadata.get("check"), "description", None)
        if nested is not None:
            type_text = "block"
        elif isinstance(check_text, str) and check_text:
            type_text = check_text
        else:
            type_text = _type_text(annotation)
        keys.append(
            ConfigKey(
                key=key,
                type_text=type_text,
                required=required,
                default_text=default_text,
                doc=" ".join(str(doc).split()),
                is_block=nested is not None,
            )
        )
        if nested is not None:
            keys.extend(collect_keys(nested, prefix=f"{key}."))
    return keys


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(keys: Sequence[ConfigKey], spider_keys: frozenset[str] = SPIDER_KEYS) -> str:
    """The markdown table of ``keys`` (one line per key, no trailing newline)."""
    lines = [
        "| Key | Accepts | Default | Origin | Description |",
        "|---|---|---|---|---|",
    ]
    for entry in keys:
        origin = "Spider" if entry.key in spider_keys else "extension"
        lines.append(
            f"| `{entry.key}` | {_cell(entry.type_text)} | {_cell(entry.default_text)} "
            f"| {origin} | {_cell(entry.doc)} |"
        )
    return "\n".join(lines)


def replace_block(page: str, generated: str) -> str:
    """``page`` with the text between the markers replaced by ``generated``."""
    begin = page.find(BEGIN_MARKER)
    end = page.find(END_MARKER)
    if begin < 0 or end < begin:
        raise ValueError(f"the page needs the markers {BEGIN_MARKER!r} and {END_MARKER!r}")
    start = begin + len(BEGIN_MARKER)
    return f"{page[:start]}\n{generated}\n{page[end:]}"


def load_root(target: str = DEFAULT_ROOT) -> type:
    """Import the ``module:class`` configuration root."""
    module_name, _, class_name = target.partition(":")
    root: type = getattr(importlib.import_module(module_name), class_name)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) the generated block; 0 = done / up to date."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.config_reference",
        description="Regenerate the configuration reference block of docs/configuration.md.",
    )
    parser.add_argument("--page", type=Path, default=DEFAULT_PAGE)
    parser.add_argument("--root", default=DEFAULT_ROOT, help="module:class of the config root")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when stale")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    page_path: Path = args.page
    page = page_path.read_text(encoding="utf-8")
    updated = replace_block(page, render_table(collect_keys(load_root(args.root))))
    if args.check:
        if updated != page:
            print(f"{page_path}: the configuration reference is out of date", file=sys.stderr)
            return 1
        print(f"{page_path}: the configuration reference is up to date")
        return 0
    if updated != page:
        page_path.write_text(updated, encoding="utf-8", newline="\n")
        print(f"updated {page_path}")
    else:
        print(f"{page_path} already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
