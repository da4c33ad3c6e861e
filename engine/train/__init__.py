"""The train stage: the training loop of one trial, the Ray Tune experiment over the sweep's
search space, and the trial table (`trials.parquet`)."""
