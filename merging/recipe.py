"""Merge recipes: mergekit's YAML configuration format, as is, plus a few raysoup keys.

A mergekit config file is a valid recipe. raysoup adds ``shard_size``, ``seed`` and
``engine``; everything else means what it means in mergekit 0.1.5. Validation errors
name the field path and what is allowed, e.g.
``parameters.densty: unknown parameter for ties; allowed: density, int8_mask, ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from merging import catalog
from merging.errors import RecipeError
from merging.methods import native_methods

Scalar = bool | int | float | str
DTypeName = Literal["float32", "float16", "bfloat16"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Conditional(_Strict):
    """A parameter value that applies to tensors whose name contains ``filter``."""

    value: Scalar | list[Scalar] = Field(description="The value, or a gradient over layers.")
    filter: str | None = Field(
        None, description="Substring of tensor names; None or '*' matches all."
    )


Setting = Scalar | list[Scalar] | Conditional | list[Conditional]


class ModelEntry(_Strict):
    """One input model and its per-model parameters."""

    model: str = Field(
        description="Local folder of a Hugging Face model (mergekit's 'path+lora' also works)."
    )
    parameters: dict[str, Setting] | None = Field(
        None, description="Per-model parameters (weight, density, ...)."
    )


class Recipe(_Strict):
    """A merge: mergekit's configuration keys plus ``shard_size``, ``seed`` and ``engine``."""

    merge_method: str = Field(description="Method name; see merging.known_methods().")
    models: list[ModelEntry] | None = Field(
        None, description="Input models (mergekit 'models' syntax)."
    )
    slices: list[dict[str, Any]] | None = Field(
        None, description="mergekit slices; always run by mergekit."
    )
    modules: dict[str, Any] | None = Field(
        None, description="mergekit modules; always run by mergekit."
    )
    base_model: str | None = Field(
        None, description="Base model for task-vector methods and slerp (t=0)."
    )
    dtype: DTypeName | None = Field(
        None, description="mergekit's compute dtype; natively only the output dtype."
    )
    out_dtype: DTypeName | None = Field(
        None, description="Output dtype; default dtype, else the inputs' dtype."
    )
    parameters: dict[str, Setting] | None = Field(
        None, description="Parameters shared by all models."
    )
    tokenizer_source: str | None = Field(
        None, description="mergekit tokenizer source; anything but 'base' routes to mergekit."
    )
    tokenizer: dict[str, Any] | None = Field(
        None, description="mergekit tokenizer config; routes to mergekit."
    )
    chat_template: str | None = Field(
        None, description="mergekit chat template; routes to mergekit."
    )
    shard_size: int = Field(
        5 * 10**9, description="Largest output shard in bytes ('2GB' and '500MB' accepted)."
    )
    seed: int | None = Field(
        None, description="Seed of random methods (DARE); drawn and recorded when unset."
    )
    engine: Literal["auto", "native", "mergekit"] = Field("auto", description="Who runs the merge.")

    @field_validator("merge_method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if not catalog.is_known(name):
            raise ValueError(
                f"unknown method {name!r}; known: {', '.join(catalog.known_methods())}"
            )
        return name

    @field_validator("shard_size", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _SIZE.match(value)
            if not match:
                raise ValueError(f"{value!r} is not a size; use bytes or e.g. '500MB', '2GB'")
            value = int(float(match[1]) * _UNITS[match[2].upper()])
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"must be positive; got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        forms = [k for k in ("models", "slices", "modules") if getattr(self, k)]
        if len(forms) != 1:
            raise ValueError(
                f"models/slices/modules: give exactly one of them; got {forms or 'none'}"
            )
        if self.engine == "native":
            _require_native(self)
        try:
            info = catalog.describe(self.merge_method, self.resolved_engine())
        except ValueError as error:
            raise ValueError(f"engine: {error}") from None
        if self.models:
            _check_models(self, info)
        return self

    def resolved_engine(self) -> catalog.Engine:
        """Who will run this recipe: raysoup's streaming engine or mergekit."""
        if self.engine != "auto":
            return self.engine
        return "native" if not _native_blockers(self) else "mergekit"

    def input_models(self) -> list[str]:
        """Every model the recipe reads, base first when there is one, without repeats."""
        names = [self.base_model] if self.base_model else []
        names += [entry.model for entry in self.models or []]
        for piece in self.slices or []:
            names += [source["model"] for source in piece.get("sources", []) if "model" in source]
        return list(dict.fromkeys(names))

    def to_yaml(self) -> str:
        """The recipe as YAML, without keys left at their defaults."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        return yaml.safe_dump(data, sort_keys=False)


def _native_blockers(recipe: Recipe) -> list[str]:
    """Reasons the native engine cannot run ``recipe`` (empty when it can)."""
    reasons = []
    if recipe.merge_method not in native_methods():
        reasons.append(f"merge_method: {recipe.merge_method!r} is not native")
    if not recipe.models:
        reasons.append("slices/modules are run by mergekit")
    if any("+" in m for m in recipe.input_models()):
        reasons.append("models: 'path+lora' references are baked by mergekit")
    if recipe.tokenizer or recipe.chat_template or recipe.tokenizer_source not in (None, "base"):
        reasons.append(
            "tokenizer options other than tokenizer_source: base are handled by mergekit"
        )
    return reasons


def _require_native(recipe: Recipe) -> None:
    blockers = _native_blockers(recipe)
    if blockers:
        raise ValueError(
            f"engine: 'native' cannot run this recipe ({'; '.join(blockers)}); use 'auto' or "
            "'mergekit'"
        )


def _check_models(recipe: Recipe, info: catalog.MethodInfo) -> None:
    _check_parameter_names("parameters", recipe.parameters, info, shared_ok=True)
    for i, entry in enumerate(recipe.models or []):
        _check_parameter_names(f"models[{i}].parameters", entry.parameters, info, shared_ok=False)
    if info.base == "required" and not recipe.base_model:
        raise ValueError(f"base_model: {info.name} needs a base model")
    if info.base == "forbidden" and recipe.base_model:
        raise ValueError(f"base_model: {info.name} does not take a base model")
    others = [m for m in recipe.models or [] if m.model != recipe.base_model]
    if info.base == "required" and info.max_models and len(others) > info.max_models:
        raise ValueError(
            f"models: {info.name} takes {info.max_models} model(s) besides base_model; got "
            f"{len(others)}"
        )
    _check_required(recipe, info, others)


def _check_parameter_names(
    path: str, params: dict | None, info: catalog.MethodInfo, shared_ok: bool
) -> None:
    for key in params or {}:
        if key not in info.parameters:
            allowed = ", ".join(info.parameters) or "none"
            raise ValueError(f"{path}.{key}: unknown parameter for {info.name}; allowed: {allowed}")
        if not shared_ok and key in info.shared:
            raise ValueError(
                f"{path}.{key}: {key} is shared by all models; set it under top-level parameters"
            )


def _check_required(recipe: Recipe, info: catalog.MethodInfo, others: list[ModelEntry]) -> None:
    shared = recipe.parameters or {}
    for key, default in info.shared.items():
        if default is catalog.REQUIRED and key not in shared:
            raise ValueError(f"parameters.{key}: required by {info.name}")
    for key, default in info.per_model.items():
        if default is not catalog.REQUIRED or key in shared:
            continue
        for i, entry in enumerate(recipe.models or []):
            if entry in others and key not in (entry.parameters or {}):
                raise ValueError(f"models[{i}].parameters.{key}: required by {info.name}")


def parse_recipe(data: dict[str, Any] | Recipe, source: str = "recipe") -> Recipe:
    """Validate a recipe given as a dict (e.g. parsed YAML); `RecipeError` names each field."""
    if isinstance(data, Recipe):
        return data
    if not isinstance(data, dict):
        raise RecipeError(source, [f"a recipe is a YAML mapping; got {type(data).__name__}"])
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(source, [_problem(e) for e in err.errors()]) from None


def _problem(error: dict) -> str:
    """One validation error as `field.path: message` (a model-level message names its own)."""
    message = error["msg"].removeprefix("Value error, ")
    path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in error["loc"])
    path = path.replace(".[", "[")
    if error["type"] == "extra_forbidden":
        model = ModelEntry if len(error["loc"]) == 3 and error["loc"][0] == "models" else Recipe
        message = f"unknown key; allowed here: {', '.join(model.model_fields)}"
    return f"{path}: {message}" if path else message


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (any mergekit config file is one)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise RecipeError(str(path), [f"not valid YAML ({err})".replace("\n", " ")]) from None
    return parse_recipe(data, str(path))
