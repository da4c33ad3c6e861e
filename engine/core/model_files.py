"""Checking a model folder's files without loading it (no torch): `config.json` readable, the
weights safetensors and as long as their headers say, a hub name reachable. Preflight runs
these before Ray starts; they read headers and small JSON files, never weights."""

from __future__ import annotations

import json
from pathlib import Path

from merging.errors import MergeError
from merging.io import INDEX_NAME, pickle_note, read_header


def folder_problems(folder: Path, field: str) -> list[str]:
    """What makes the model folder unusable: an unreadable `config.json`, no safetensors
    weights (pickle weights are never loaded), or weights shorter than their headers say."""
    config = folder / "config.json"
    try:
        found = json.loads(config.read_text())
    except FileNotFoundError:
        return [f"{field}: {folder} has no config.json; give a Hugging Face model folder"]
    except (OSError, ValueError) as err:
        return [f"{field}: {config} cannot be read ({type(err).__name__}: {err})"]
    if not isinstance(found, dict) or "model_type" not in found:
        return [f"{field}: {config} has no `model_type`; it is not a model's config"]
    return [f"{field}: {problem}" for problem in _weight_problems(folder)]


def _weight_problems(folder: Path) -> list[str]:
    files = weight_files(folder)
    if not files:
        return [f"{folder} has no .safetensors weights{pickle_note(folder)}"]
    problems = []
    for path in files:
        if not path.is_file():
            problems.append(f"{path} is missing (named in {INDEX_NAME})")
            continue
        try:
            read_header(path)
        except MergeError as err:
            problems.append(str(err))
    return problems


def weight_files(folder: Path) -> list[Path]:
    """The model's safetensors files: those its index names, or every one in the folder."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            names = json.loads(index.read_text())["weight_map"].values()
        except (OSError, ValueError, KeyError, AttributeError):
            return []
        return [folder / name for name in dict.fromkeys(names)]
    return sorted(folder.glob("*.safetensors"))


def parameter_bytes(folder: Path) -> int:
    """Bytes of the model's weights as stored (from the safetensors headers)."""
    total = 0
    for path in weight_files(folder):
        try:
            total += sum(info.nbytes for info, _ in read_header(path).values())
        except (OSError, MergeError):
            continue
    return total


def parameter_count(folder: Path) -> int:
    """How many numbers the model's weights hold (from the safetensors headers)."""
    total = 0
    for path in weight_files(folder):
        try:
            total += sum(info.nbytes // info.itemsize for info, _ in read_header(path).values())
        except (OSError, MergeError):
            continue
    return total


def hub_config(name: str) -> Path | str:
    """The `config.json` of a hub model (from the local cache, or downloaded: a few kB), or
    the reason the hub cannot be reached for it."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and it is not in the local cache"
    try:
        return Path(hf_hub_download(name, "config.json", etag_timeout=10))
    except Exception as err:  # offline, unknown repository, gated, ...
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
