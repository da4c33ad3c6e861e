"""Native merge methods. Importing this package registers every method module in it."""

from . import dare, graft, linear, slerp, task_arithmetic, ties  # noqa: F401  (registration)
from .registry import MethodSpec, ParamSpec, PerModel, get_method, merge_method, native_methods, unregister

__all__ = ["MethodSpec", "ParamSpec", "PerModel", "get_method", "merge_method", "native_methods", "unregister"]
