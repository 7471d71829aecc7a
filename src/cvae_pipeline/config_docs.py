"""``docs/configuration.md``, rendered from the schema (``config.py``: what each knob means and
allows) and ``params.yaml`` (its value): ``cvae params --markdown > docs/configuration.md``. A test
keeps the committed file current, so the reference never drifts from the code."""

from __future__ import annotations

import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel

from .config import PipelineParams

HEADER = """# Configuration

Every knob the stages read lives in `params.yaml`, once; change one for a single experiment with
`dvc exp run -S train.lr=3e-4`. DVC re-runs exactly the stages that read it (`dvc.yaml` lists each
stage's `params`). The whole file is validated before any stage does work: an unknown key, a wrong
type or a value out of range stops the stage with one line naming the key, the value and the rule.
`cvae params` prints the validated file.

This page is generated: `cvae params --markdown > docs/configuration.md` (a test fails when it is
out of date). The value column is `params.yaml` on this commit.
"""


def _model_class(annotation: Any) -> type[BaseModel] | None:
    for candidate in typing.get_args(annotation) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _allowed(field) -> str:
    """What the schema allows, in words: choices, type, range, null."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) is not typing.Literal and type(None) in args
    core = [a for a in args if a is not type(None)] if nullable else [annotation]
    base = core[0]
    if typing.get_origin(base) is typing.Literal:
        text = " \\| ".join(f"`{v}`" for v in typing.get_args(base))
    else:
        if typing.get_origin(base) is typing.Annotated:  # StrictInt, StrictBool: the type they wrap
            base = typing.get_args(base)[0]
        name = getattr(base, "__name__", str(base))
        text = {"StrictInt": "int", "StrictBool": "bool"}.get(name, name)
        if typing.get_origin(base) is list:
            text = "list"
    bounds = []
    for meta in field.metadata:
        for kind, attribute, symbol in (
            (Gt, "gt", ">"),
            (Ge, "ge", "≥"),
            (Lt, "lt", "<"),
            (Le, "le", "≤"),
            (MinLen, "min_length", "length ≥"),
        ):
            if isinstance(meta, kind):
                bounds.append(f"{symbol} {getattr(meta, attribute)}")
    if bounds:
        text += " " + ", ".join(bounds)
    if nullable:
        text += " or `null`"
    return text


def _value(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return f"{len(value)} entries"
    return f"`{value}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def _rows(model: type[BaseModel], raw: dict, prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _model_class(field.annotation)
        if nested is not None and typing.get_origin(field.annotation) is not list:
            rows.extend(_rows(nested, raw.get(name) or {}, f"{key}."))
            continue
        rows.append(f"| `{key}` | {_value(raw.get(name))} | {_allowed(field)} | {_cell(field.description)} |")
    return rows


def render_markdown(raw: dict) -> str:
    """The reference page for a loaded (and validated) ``params.yaml`` mapping."""
    parts = [HEADER]
    for section, field in PipelineParams.model_fields.items():
        model = _model_class(field.annotation)
        assert model is not None
        parts.append(f"\n## `{section}`\n\n{(model.__doc__ or '').strip()}\n")
        parts.append("| key | value | allowed | meaning |\n|---|---|---|---|")
        parts.extend(_rows(model, raw.get(section) or {}, f"{section}."))
    sources = PipelineParams.model_fields["data"].annotation.model_fields["sources"]
    item = _model_class(typing.get_args(sources.annotation)[0])
    parts.append("\nEach entry of `data.sources`:\n\n| key | allowed | meaning |\n|---|---|---|")
    for name, field in item.model_fields.items():
        parts.append(f"| `{name}` | {_allowed(field)} | {_cell(field.description)} |")
    return "\n".join(parts) + "\n"
