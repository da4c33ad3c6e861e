"""The prepare stage: each task's data read, selected (`selection/`), ordered by example key,
split and tokenized once per sweep on Ray Data, into `data/` of the run directory."""
