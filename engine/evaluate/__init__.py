"""The evaluate stage: every candidate on every evaluation set through a Ray Data actor pool
(`pool`, `worker`), with metrics by registry (`metrics/`).

Imports nothing here: an evaluation actor imports only the modules it needs."""
