"""Checkpoint selection, uniform soups and greedy soups."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from merging.soups import greedy_soup, select_checkpoints, uniform_soup
from tests.merging.conftest import load_all


def test_select_checkpoints_orders_by_step():
    names = [f"run/checkpoint-{s}" for s in (300, 20, 100, 200, 400)]
    steps = lambda paths: [int(p.name.split("-")[1]) for p in paths]  # noqa: E731
    assert steps(select_checkpoints(names)) == [20, 100, 200, 300, 400]
    assert steps(select_checkpoints(names, "last", k=2)) == [300, 400]
    assert steps(select_checkpoints(names, "every", n=2)) == [20, 200, 400]
    assert steps(select_checkpoints(names, "every", n=1)) == [20, 100, 200, 300, 400]
    assert steps(select_checkpoints(names, "every", n=9)) == [400]
    with pytest.raises(ValueError, match="k: 'last' needs a positive k"):
        select_checkpoints(names, "last")
    with pytest.raises(ValueError, match="mode: unknown selection 'best'"):
        select_checkpoints(names, "best")


def test_every_n_counts_back_from_the_newest_checkpoint():
    """On an even number of checkpoints, counting from the oldest would give other ones."""
    names = [f"run/checkpoint_{s:06d}" for s in (60, 10, 40, 30, 20, 50)]
    picked = [int(p.name.split("_")[1]) for p in select_checkpoints(names, "every", n=2)]
    assert picked == [20, 40, 60]
    picked = [int(p.name.split("_")[1]) for p in select_checkpoints(names, "every", n=4)]
    assert picked == [20, 60]
    with pytest.raises(ValueError, match="n: 'every' needs a positive n; got 0"):
        select_checkpoints(names, "every", n=0)


def test_folders_without_a_step_keep_their_order():
    names = ["b/final", "a/best", "c/other"]
    assert [p.parent.name for p in select_checkpoints(names)] == ["b", "a", "c"]
    assert [p.parent.name for p in select_checkpoints(names, "last", k=2)] == ["a", "c"]


def test_uniform_soup_is_the_mean(llama, tmp_path):
    out = uniform_soup(llama, tmp_path / "soup")
    inputs = [load_all(m) for m in llama]
    for name, value in load_all(out).items():
        assert torch.allclose(value, sum(i[name] for i in inputs) / 3, atol=1e-6)


@pytest.fixture
def far_model(llama, tmp_path):
    """A checkpoint far from the others (the base plus large noise)."""
    from safetensors.torch import save_file

    folder = tmp_path / "far"
    shutil.copytree(llama[0], folder)
    state = {k: v + torch.randn_like(v) for k, v in load_all(llama[0]).items()}
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("mode", ["max", "min"])
def test_greedy_soup_keeps_only_ingredients_that_help(mode, llama, far_model, tmp_path):
    _, ft1, ft2 = llama
    target = {k: (load_all(ft1)[k] + load_all(ft2)[k]) / 2 for k in load_all(ft1)}

    def distance(folder):
        weights = load_all(folder)
        return float(sum((weights[k] - target[k]).pow(2).sum() for k in target))

    score = distance if mode == "min" else (lambda folder: -distance(folder))
    result = greedy_soup([far_model, ft1, ft2], tmp_path / "greedy", score, mode=mode)
    assert set(result.ingredients) == {ft1, ft2}
    assert [kept for _, _, kept in result.tried] == [True, False]
    assert result.individual[far_model] == score(far_model)
    assert distance(result.path) < 1e-8
    assert not list(tmp_path.glob("raysoup-greedy-*"))


def test_selection_counts_must_be_positive():
    names = [f"run/checkpoint-{s}" for s in (1, 2, 3)]
    assert [p.name for p in select_checkpoints(names, "last", k=1)] == ["checkpoint-3"]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"k: 'last' needs a positive k; got {bad}"):
            select_checkpoints(names, "last", k=bad)
        with pytest.raises(ValueError, match=f"n: 'every' needs a positive n; got {bad}"):
            select_checkpoints(names, "every", n=bad)


def test_soups_of_nothing_and_unknown_modes_are_refused(llama, tmp_path):
    from merging import MergeError

    with pytest.raises(MergeError, match="^a soup needs at least one checkpoint$"):
        uniform_soup([], tmp_path / "u")
    with pytest.raises(MergeError, match="^a soup needs at least one checkpoint$"):
        greedy_soup([], tmp_path / "g", lambda folder: 0.0)
    with pytest.raises(ValueError, match="^mode: 'best'; allowed: max, min$"):
        greedy_soup(llama, tmp_path / "g", lambda folder: 0.0, mode="best")


def test_soups_refuse_to_replace_a_folder_unless_asked(llama, tmp_path):
    from merging import MergeError

    out = uniform_soup(llama[1:], tmp_path / "soup")
    with pytest.raises(MergeError, match="already exists"):
        uniform_soup(llama[1:], out)
    with pytest.raises(MergeError, match="already exists"):
        greedy_soup(llama[1:], out, lambda folder: 0.0)
    uniform_soup(llama, out, overwrite=True)
    greedy_soup(llama, out, lambda folder: 0.0, overwrite=True)


def test_a_greedy_soup_keeps_an_ingredient_only_if_the_score_strictly_improves(llama, tmp_path):
    """Equal scores keep nothing; the default direction is higher-is-better; the soup's score is
    the score of what it kept; trial soups are made beside the output and removed."""
    _, ft1, ft2 = llama
    seen = []

    def flat(folder):
        seen.append(Path(folder))
        return 1.0

    result = greedy_soup([ft1, ft2], tmp_path / "flat", flat, mode="min")
    assert result.ingredients == [ft1] and [kept for *_, kept in result.tried] == [False]
    (trial,) = [p for p in seen if p not in (ft1, ft2)]
    assert trial.parent.parent == tmp_path and trial.parent.name.startswith("raysoup-greedy-")
    assert not trial.exists()
    assert greedy_soup([ft1, ft2], tmp_path / "flat2", flat).ingredients == [ft1]

    target = load_all(ft1)  # ft1 is the best alone; any average with ft2 is further from it

    def closeness(folder):  # higher is better (the default mode)
        weights = load_all(folder)
        return -float(sum((weights[k] - target[k]).pow(2).sum() for k in target))

    result = greedy_soup([ft2, ft1], tmp_path / "close", closeness)
    assert result.ingredients == [ft1] and result.score == closeness(ft1) == 0.0
    assert result.individual == {ft1: 0.0, ft2: closeness(ft2)}
    assert [kept for *_, kept in result.tried] == [False]


def test_soups_pass_recipe_keys_to_every_merge(llama, tmp_path):
    from merging.io import ModelFiles

    dtypes = []

    def score(folder):
        files = ModelFiles(folder)
        dtypes.append({files.info[n].dtype for n in files.names()})
        return float(len(dtypes))  # every later soup scores higher: all are kept

    result = greedy_soup(llama, tmp_path / "g", score, out_dtype="bfloat16")
    assert len(result.ingredients) == 3 and dtypes[3:] == [{torch.bfloat16}] * 2
    for out in (result.path, uniform_soup(llama, tmp_path / "u", out_dtype="bfloat16")):
        files = ModelFiles(out)
        assert {files.info[n].dtype for n in files.names()} == {torch.bfloat16}
