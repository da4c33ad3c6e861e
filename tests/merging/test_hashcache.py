"""Input digests are remembered across merges, and only while the file is unchanged."""

from __future__ import annotations

import hashlib
import shutil

import blake3

import merging
from merging import hashcache
from merging.digest import file_digest
from merging.provenance import source_hash


def card_hash(out, model) -> str:
    row = next(
        line for line in (out / "README.md").read_text().splitlines() if f"`{model}`" in line
    )
    label = row.split("`")[3]
    assert label.startswith("blake3:")
    return label.removeprefix("blake3:")


def test_file_digest_is_blake3_of_the_bytes(llama):
    shard = llama[1] / "model.safetensors"
    assert file_digest(shard) == blake3.blake3(shard.read_bytes()).hexdigest()


def test_digests_are_cached_and_a_rewritten_file_is_hashed_again(llama, tmp_path):
    models = [shutil.copytree(m, tmp_path / m.name) for m in llama[1:]]
    shard = models[0] / "model.safetensors"
    recipe = {"merge_method": "linear", "models": [{"model": str(m)} for m in models]}

    first = merging.merge(recipe, tmp_path / "first")
    assert hashcache.cached(shard) == file_digest(shard)
    assert (
        card_hash(first, models[0])
        == source_hash(str(models[0]), {shard.name: file_digest(shard)}).digest
    )

    hashcache.remember(shard, "f" * 64)  # stands for a digest computed by an earlier process
    cached = merging.merge(recipe, tmp_path / "cached")
    assert (
        card_hash(cached, models[0]) == source_hash(str(models[0]), {shard.name: "f" * 64}).digest
    )

    shard.write_bytes(shard.read_bytes())  # same bytes, but a new modification: hashed again
    again = merging.merge(recipe, tmp_path / "again")
    assert card_hash(again, models[0]) == card_hash(first, models[0])


def test_sha256_entries_of_older_versions_are_not_taken_for_blake3(llama, tmp_path):
    model = shutil.copytree(llama[1], tmp_path / "model")
    shard = model / "model.safetensors"
    sha256 = hashlib.sha256(shard.read_bytes()).hexdigest()
    older = hashcache._entry(shard).parent.with_name("sha256") / hashcache._entry(shard).name
    older.parent.mkdir(parents=True, exist_ok=True)
    older.write_text(sha256 + "\n")  # where a sha256-based version kept this file's digest

    assert hashcache.cached(shard) is None
    out = merging.merge(
        {"merge_method": "linear", "models": [{"model": str(model)}, {"model": str(llama[2])}]},
        tmp_path / "out",
    )
    assert card_hash(out, model) == source_hash(str(model), {shard.name: file_digest(shard)}).digest
    assert older.read_text().strip() == sha256


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(hashcache.CACHE_ENV, str(tmp_path / "mine"))
    assert hashcache.cache_folder() == tmp_path / "mine"
    monkeypatch.delenv(hashcache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hashcache.cache_folder() == tmp_path / "xdg" / "raysoup"


def test_an_unwritable_cache_only_means_no_caching(llama, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(hashcache.CACHE_ENV, str(blocker))
    out = merging.merge(
        {"merge_method": "linear", "models": [{"model": str(m)} for m in llama[1:]]}, tmp_path / "o"
    )
    shard = llama[1] / "model.safetensors"
    assert (
        card_hash(out, llama[1])
        == source_hash(str(llama[1]), {shard.name: file_digest(shard)}).digest
    )
