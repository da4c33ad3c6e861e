"""Pieces every stage shares: the run directory, reading data files, the Ray session, models,
text encoding, token batches and progress display. Imports no stage."""
