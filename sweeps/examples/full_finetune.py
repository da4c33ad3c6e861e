"""A sweep written in Python: full fine-tuning over a learning-rate grid and two seeds.

`raysoup run sweeps/examples/full_finetune.py` loads the `sweep` this file defines.
"""

from sweeps import DataConfig, ModelConfig, Sweep, TrainConfig, grid

sweep = Sweep(
    name="full-finetune",
    model=ModelConfig(preset="demo"),
    data=DataConfig(
        train="../../engine/demo/data/add/train.jsonl",
        eval="../../engine/demo/data/add/eval.jsonl",
        format="prompt_completion",
    ),
    train=TrainConfig(
        lr=grid([3e-4, 1e-3]), max_steps=50, batch_size=16, seq_len=32, eval_every=25
    ),
    seeds=[0, 1],
)
