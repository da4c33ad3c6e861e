"""Native merge methods, one module each, imported on first use (see registry)."""

from merging.methods.registry import (
    MethodSpec,
    ParamSpec,
    PerModel,
    array_kernel,
    declare_builtin,
    get_method,
    merge_method,
    native_methods,
    unregister,
)

# Importing a method module registers its methods; most import torch, so none is
# imported before a recipe names it.
declare_builtin(f"{__name__}.dare", "dare_linear", "dare_ties")
declare_builtin(f"{__name__}.graft", "graft")
declare_builtin(f"{__name__}.linear", "linear")
declare_builtin(f"{__name__}.slerp", "slerp")
declare_builtin(f"{__name__}.task_arithmetic", "task_arithmetic")
declare_builtin(f"{__name__}.ties", "ties")

__all__ = [
    "MethodSpec",
    "ParamSpec",
    "PerModel",
    "array_kernel",
    "get_method",
    "merge_method",
    "native_methods",
    "unregister",
]
