"""The one error type the merging package raises for bad inputs."""


class MergeError(ValueError):
    """A merge was refused: mismatched, missing or non-finite tensors, or a bad recipe.

    The message names the tensor and the models involved, so a user can find the
    offending checkpoint without re-running anything.
    """
