"""The lean FSDP2 trainer: reads a `tokenmill build` manifest's shards through memory maps (see train.py)."""
