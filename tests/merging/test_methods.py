"""Native method functions on plain tensors: registry behaviour and parity with mergekit and
PEFT."""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_tensors
from peft.utils import merge_utils

from merging.methods import PerModel, get_method, merge_method, native_methods, unregister
from merging.methods.sparsify import bernoulli, magnitude


def _tensors(seed=0, shape=(48, 40)):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.1 * torch.randn(shape, generator=g) for _ in range(2)]


def run(name, base, models, **params):
    spec = get_method(name)
    return spec(base, models, {**spec.defaults(), **params}, torch.Generator().manual_seed(0))


def test_registry_lists_native_methods():
    assert native_methods() == [
        "dare_linear",
        "dare_ties",
        "graft",
        "linear",
        "slerp",
        "task_arithmetic",
        "ties",
    ]


SPECS = {
    # name: (base, min and max models, elementwise, random, array kernel, {param: default})
    "dare_linear": (
        "required",
        1,
        None,
        False,
        True,
        False,
        {
            "weight": 1.0,
            "density": 1.0,
            "normalize": False,
            "rescale": True,
            "int8_mask": False,
            "lambda": 1.0,
        },
    ),
    "dare_ties": (
        "required",
        1,
        None,
        False,
        True,
        False,
        {
            "weight": 1.0,
            "density": 1.0,
            "normalize": False,
            "rescale": True,
            "int8_mask": False,
            "lambda": 1.0,
        },
    ),
    "graft": ("required", 1, None, False, False, False, {"density": 0.1, "weight": 1.0}),
    "linear": ("ignored", 1, None, True, False, True, {"weight": 1.0, "normalize": True}),
    "slerp": ("required", 1, 1, False, False, False, {}),
    "task_arithmetic": (
        "required",
        1,
        None,
        True,
        False,
        False,
        {"weight": 1.0, "normalize": False, "lambda": 1.0},
    ),
    "ties": (
        "required",
        1,
        None,
        False,
        False,
        False,
        {
            "weight": 1.0,
            "density": 1.0,
            "normalize": True,
            "rescale": False,
            "int8_mask": False,
            "lambda": 1.0,
        },
    ),
}


def test_builtin_methods_declare_their_scope_and_parameters():
    """Read from each function's signature when its module is imported (first use)."""
    for name, (base, least, most, elementwise, random, kernel, defaults) in SPECS.items():
        spec = get_method(name)
        assert spec.name == name and spec.base == base, name
        assert (spec.min_models, spec.max_models) == (least, most), name
        assert spec.elementwise is elementwise and spec.random is random, name
        assert (spec.array_fn is not None) is kernel, name
        assert spec.defaults() == defaults, name
        assert spec.summary and spec.summary == spec.fn.__doc__.strip().split("\n")[0], name
        per_model = {p.name for p in spec.params if p.per_model}
        assert per_model == {"weight", "density"} & set(defaults), name
        kinds = {p.name: p.kind for p in spec.params}
        assert all(kinds[k] is type(v) for k, v in defaults.items()), name
    assert [p.arg for p in get_method("ties").params][-1] == "lambda_"
    assert get_method("slerp").param("t").required and get_method("ties").param("t") is None
    linear = get_method("linear")
    assert linear.accepts_arrays({"weight": 1.0}, 3)
    assert linear.accepts_arrays({"weight": [1.0, 0.0]}, 2)
    assert not linear.accepts_arrays({"weight": [0.5, 0.5]}, 2)
    assert not get_method("ties").accepts_arrays({}, 2)


def test_a_registered_method_gets_what_its_signature_declares():
    seen = {}

    @merge_method("_probe", base="ignored", min_models=2, max_models=3, elementwise=True)
    def probe(models, *, generator=None, scale, count: PerModel[int] = 2, if_: bool = False):
        """First line.

        More text."""
        seen.update(generator=generator, scale=scale, count=count, if_=if_)
        return models[0]

    try:
        spec = get_method("_probe")
        assert (spec.min_models, spec.max_models, spec.elementwise) == (2, 3, True)
        assert spec.random and spec.summary == "First line." and spec.base == "ignored"
        params = {p.name: (p.arg, p.per_model, p.kind, p.required) for p in spec.params}
        assert params == {
            "scale": ("scale", False, float, True),  # no annotation: a float
            "count": ("count", True, int, False),
            "if": ("if_", False, bool, False),
        }
        generator = torch.Generator()
        spec([], [torch.ones(1)] * 2, {"scale": 2.0, "count": 5, "if": True}, generator)
        assert seen == {"generator": generator, "scale": 2.0, "count": [5, 5], "if_": True}
    finally:
        unregister("_probe")
    with pytest.raises(ValueError, match="unknown merge method '_probe'"):
        get_method("_probe")


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="already registered"):
        merge_method("linear", base="ignored")(lambda models: models[0])


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown merge method 'tie'.*ties"):
        get_method("tie")


def test_a_registered_method_reads_its_signature():
    @merge_method("_scale", base="required")
    def scale(base, models, *, factor: float = 2.0):
        return base * factor

    try:
        spec = get_method("_scale")
        assert spec.defaults() == {"factor": 2.0} and not spec.random
        assert torch.equal(spec(torch.ones(2), [], {"factor": 3.0}), torch.full((2,), 3.0))
    finally:
        unregister("_scale")


MERGEKIT_CASES = [
    ("linear", {"weight": [0.3, 0.7]}),
    ("linear", {"weight": [2.0, 1.0], "normalize": False}),
    ("task_arithmetic", {"weight": [0.3, 0.7]}),
    ("task_arithmetic", {"weight": [0.5, 0.5], "normalize": True, "lambda": 0.8}),
    ("ties", {"weight": [0.3, 0.7], "density": [0.2, 0.5]}),
    ("ties", {"weight": [1.0, -0.5], "density": [0.3, 0.3], "rescale": True}),
    ("ties", {"weight": [0.5, 0.5]}),
    ("dare_linear", {"weight": [0.4, 0.6]}),  # density 1: deterministic
    ("dare_ties", {"weight": [0.4, 0.6], "normalize": True}),
    ("slerp", {"t": 0.3}),
    ("slerp", {"t": 0.9}),
]


@pytest.mark.parametrize(
    "name,params", MERGEKIT_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_matches_mergekit_on_tensors(name, params):
    base, models = _tensors()
    if name == "slerp":
        models = models[:1]
    ours = run(name, None if name == "linear" else base, models, **params)
    if name == "linear":
        theirs = merge_tensors(models, name, parameters=params)
    else:
        per_model = {
            k: dict(zip([1, 2], v)) if isinstance(v, list) else v for k, v in params.items()
        }
        theirs = merge_tensors([base, *models], name, parameters=per_model, base_index=0)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_slerp_falls_back_to_lerp_for_collinear_inputs():
    base = torch.randn(10)
    assert torch.allclose(run("slerp", base, [2 * base], t=0.5), 1.5 * base)


def test_ties_matches_peft_with_unit_weights():
    base, models = _tensors(1)
    deltas = [m - base for m in models]
    theirs = base + merge_utils.ties(deltas, torch.ones(2), density=0.3)
    ours = run("ties", base, models, weight=[1.0, 1.0], density=[0.3, 0.3])
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_magnitude_keeps_the_largest_entries_like_peft():
    delta = torch.randn(64, 32)
    ours = magnitude(delta, 0.25)
    theirs = merge_utils.magnitude_based_pruning(delta, 0.25)
    assert torch.equal(ours != 0, theirs != 0)


def test_dare_mask_equals_peft_random_pruning_with_the_same_seed():
    delta = torch.randn(64, 32)
    ours = bernoulli(delta, 0.3, torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    theirs = merge_utils.random_pruning(delta, 0.3, rescale=False)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_is_unbiased_like_peft(name):
    """Averaged over many draws, DARE (ours: L1 rescale; PEFT: 1/density) recovers the undropped
    merge."""
    base, models = _tensors(2, shape=(16, 16))
    deltas = [m - base for m in models]
    weights = [0.5, 0.5]
    draws = 400
    ours = torch.stack(
        [
            get_method(name)(
                base,
                models,
                {**get_method(name).defaults(), "weight": weights, "density": [0.5, 0.5]},
                torch.Generator().manual_seed(s),
            )
            - base
            for s in range(draws)
        ]
    ).mean(0)
    peft_fn = merge_utils.dare_linear if name == "dare_linear" else merge_utils.dare_ties
    theirs = torch.stack([peft_fn(deltas, torch.tensor(weights), 0.5) for _ in range(draws)]).mean(
        0
    )
    if name == "dare_linear":
        exact = sum(w * d for w, d in zip(weights, deltas))
        assert (ours - exact).abs().mean() < 0.1 * exact.abs().mean()
        assert (theirs - exact).abs().mean() < 0.1 * exact.abs().mean()
    # Both estimators agree in sign on almost every entry, and in size on average.
    assert (ours.sign() == theirs.sign()).float().mean() > 0.9
    assert abs(ours.abs().mean() / theirs.abs().mean() - 1) < 0.35


def test_dare_is_reproducible_with_a_generator():
    base, models = _tensors(3)
    a = run("dare_ties", base, models, weight=[1.0, 1.0], density=[0.2, 0.2])
    b = run("dare_ties", base, models, weight=[1.0, 1.0], density=[0.2, 0.2])
    assert torch.equal(a, b)


def test_graft_keeps_only_the_largest_fraction_of_the_update():
    base, models = _tensors(4)
    merged = run("graft", base, models[:1], density=[0.1])
    changed = merged != base
    assert changed.sum() == int(0.1 * base.numel())
    delta = (models[0] - base).abs()
    assert delta[changed].min() >= delta[~changed].max()
    assert torch.equal(merged[changed], models[0][changed])


@pytest.mark.parametrize("n", [1000, 600_000])
def test_magnitude_keeps_exactly_k_with_many_ties_lowest_index_first(n):
    delta = torch.randint(-20, 21, (n,), generator=torch.Generator().manual_seed(5)).float()
    kept = magnitude(delta, 0.3)
    k = int(0.3 * n)
    assert int((kept != 0).sum()) == k
    cut = kept[kept != 0].abs().min()
    assert (delta.abs() > cut).sum() <= k and bool(((kept == 0) & (delta.abs() > cut)).sum() == 0)
    tied_kept = ((kept != 0) & (delta.abs() == cut)).nonzero().squeeze(1)
    tied_all = (delta.abs() == cut).nonzero().squeeze(1)
    assert torch.equal(tied_kept, tied_all[: tied_kept.numel()])


def test_magnitude_edge_densities():
    delta = torch.randn(50)
    assert torch.equal(magnitude(delta, 1.0), delta)
    assert not magnitude(delta, 0.0).any()
    assert int((magnitude(delta, 0.001) != 0).sum()) == 1


def _opposed(seed=5, shape=(32, 24)):
    """base, and two models whose task vectors d and e differ in sign and size: e = -2 d at
    even flat positions and d / 2 at odd ones."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    d = 0.1 * torch.randn(shape, generator=g)
    even = (torch.arange(d.numel()) % 2 == 0).reshape(shape)
    return base, d, even, [base + d, base + torch.where(even, -2 * d, d / 2)]


@pytest.mark.parametrize(
    "name, params, at_even, at_odd",
    [
        # merged task vector at even and at odd positions, as multiples of d (by hand)
        ("task_arithmetic", {"weight": [1.0, 1.0]}, -1.0, 1.5),
        ("task_arithmetic", {"weight": [1.0, 0.5], "lambda": 2.0}, 0.0, 2.5),
        ("task_arithmetic", {"weight": [1.0, 1.0], "normalize": True}, -0.5, 0.75),
        ("ties", {"weight": [1.0, 1.0]}, -2.0, 0.75),  # sign of d + e: only e at even
        ("ties", {"weight": [1.0, 1.0], "normalize": False}, -2.0, 1.5),
        ("ties", {"weight": [0.5, 1.0], "lambda": 0.5}, -1.0, 1 / 3),  # odd: d / 1.5 / 2
        ("dare_ties", {"weight": [1.0, 1.0]}, -2.0, 1.5),  # density 1: no drop
        ("dare_ties", {"weight": [1.0, 1.0], "normalize": True}, -2.0, 0.75),
        ("dare_linear", {"weight": [1.0, 1.0]}, -1.0, 1.5),
        ("dare_linear", {"weight": [2.0, 1.0], "normalize": True, "lambda": 3.0}, 0.0, 2.5),
        ("graft", {"weight": [1.0, 1.0], "density": [1.0, 1.0]}, -1.0, 1.5),
    ],
)
def test_task_vectors_of_opposite_signs_merge_as_computed_by_hand(name, params, at_even, at_odd):
    base, d, even, models = _opposed()
    merged = run(name, base, models, **params)
    expected = base + torch.where(even, at_even * d, at_odd * d)
    assert torch.allclose(merged, expected, atol=1e-6)


def test_ties_trims_each_task_vector_before_the_sign_election():
    """density 0.5 keeps each model's larger half; an entry only one model keeps is its own."""
    base = torch.zeros(4)
    models = [torch.tensor([4.0, -3.0, 0.1, 0.2]), torch.tensor([-1.0, -2.0, 5.0, -0.1])]
    merged = run("ties", base, models, weight=[1.0, 1.0], density=[0.5, 0.5])
    # kept: model 0 -> [4, -3, 0, 0]; model 1 -> [0, -2, 5, 0]; signs agree everywhere kept
    assert torch.allclose(merged, torch.tensor([4.0, -2.5, 5.0, 0.0]))
    rescaled = run("ties", base, models, weight=[1.0, 1.0], density=[0.5, 0.5], rescale=True)
    # L1 restored per model: model 0 by 7.3 / 7, model 1 by 8.1 / 7
    expected = torch.tensor([4.0 * 7.3 / 7, (-3.0 * 7.3 / 7 - 2.0 * 8.1 / 7) / 2, 5 * 8.1 / 7, 0])
    assert torch.allclose(rescaled, expected, atol=1e-5)


def test_an_election_tie_keeps_the_positive_entries():
    """Where the task vectors sum to exactly zero, the elected sign is +."""
    base, d = torch.zeros(6), torch.tensor([1.0, -2.0, 3.0, -0.5, 0.25, -4.0])
    for name in ("ties", "dare_ties"):
        merged = run(name, base, [base + d, base - d], weight=[1.0, 1.0])
        assert torch.equal(merged, d.abs()), name


def test_rescaling_restores_the_l1_norm_of_each_pruned_task_vector():
    """Also across blocks of a tensor larger than one block, and for small task vectors."""
    from merging.methods.sparsify import BLOCK, magnitude_cutoff

    g = torch.Generator().manual_seed(9)
    for n, size in ((3 * BLOCK + 5, 1.0), (64, 1e-3)):
        base = torch.randn(n, generator=g)
        delta = size * torch.randn(n, generator=g)
        cutoff = magnitude_cutoff(base, base + delta, 0.3, rescale=True)
        kept = cutoff.prune(delta.clone(), 0)
        assert cutoff.scale == pytest.approx(float(delta.abs().sum() / kept.abs().sum()), rel=1e-5)
    d = 1e-4 * torch.randn(64, 32, generator=g)  # an L1 norm below 1
    for name in ("dare_linear", "dare_ties"):
        merged = run(name, torch.zeros_like(d), [d], weight=[1.0], density=[0.4])
        assert (merged == 0).float().mean() == pytest.approx(0.6, abs=0.1), name
        assert float(merged.abs().sum()) == pytest.approx(float(d.abs().sum()), rel=1e-5), name
        plain = run(name, torch.zeros_like(d), [d], weight=[1.0], density=[0.4], rescale=False)
        assert torch.equal(plain[plain != 0], d[plain != 0]), name  # dropped, not rescaled


def test_normalised_sums_divide_by_the_weights_that_count():
    base, d, even, models = _opposed()
    e = models[1] - base
    # Weights summing to 0 divide by 1; summing to 0.5 divide by 0.5.
    merged = run("task_arithmetic", base, models, weight=[1.0, -1.0], normalize=True)
    assert torch.allclose(merged, base + d - e, atol=1e-6)
    merged = run("task_arithmetic", base, models, weight=[0.25, 0.25], normalize=True)
    assert torch.allclose(merged, base + (d + e) / 2, atol=1e-6)
    # Where every task vector is zero no model counts: the base stays, never 0 / 0.
    still = run("dare_ties", base, [base.clone(), base.clone()], weight=[1.0, 1.0], normalize=True)
    assert torch.equal(still, base)
    b, wide_models = base.double(), [m.double() for m in models]
    wide = run("task_arithmetic", b, wide_models, weight=[1.0, 1.0])  # float64 stays float64
    expected = b + sum(m - b for m in wide_models)
    assert wide.dtype == torch.float64 and torch.allclose(wide, expected, atol=1e-12, rtol=0)
