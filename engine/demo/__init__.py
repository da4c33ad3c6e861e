"""Embedded demo assets: a tiny pretrained base model, two synthetic tasks, and
tiny random models for tests.

``BASE_DIR`` is a Hugging Face model folder (model, tokenizer, generation
config); ``DATA_DIR / <task> / {train,eval,test}.jsonl`` holds each task's bundled
examples, and ``pool.jsonl`` its training examples with planted copies and junk
(``engine.demo.pool``), which the demo sweep trains from. Rebuild them with
``python -m engine.demo.build_assets`` (``--data-only`` for the data alone).
"""

from engine.demo.paths import BASE_DIR, DATA_DIR
from engine.demo.tasks import TASKS, make_task

# `engine.demo.tiny` (tiny random models) imports torch and transformers: import it directly.
__all__ = ["BASE_DIR", "DATA_DIR", "TASKS", "make_task"]
