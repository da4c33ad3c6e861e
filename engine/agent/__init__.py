"""Running a W&B sweep file's own script (`program`/`command`) as Ray Tune trials, with the
meaning W&B's agent gives it: `command` (the macros), `trial` (one configuration's script),
`runfile` (reading the script's W&B run file), `plan` (what would run, without Ray),
`experiment` (the Tune experiment), `records` and `results` (what each trial wrote, and
`trials.parquet`)."""
