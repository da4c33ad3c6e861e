"""The merge stage: merge plans turned into jobs, each run as a Ray task as soon as its trials
have finished, into `merges/` of the run directory."""
