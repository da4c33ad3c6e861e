"""The one error type the merging package raises for bad inputs."""


class MergeError(ValueError):
    """A merge was refused: mismatched, missing or non-finite tensors, or a bad recipe.

    The message names the tensor and the models involved, so a user can find the
    offending checkpoint without re-running anything.
    """


class RecipeError(MergeError):
    """A merge recipe that does not validate: `problems` holds one line per problem, each
    starting with the field path (`models[1].parameters.wieght: unknown parameter ...`)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))
