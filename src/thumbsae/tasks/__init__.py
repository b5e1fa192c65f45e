"""The stages wired together for `train.py`, `evaluate.py`, `extract.py` and the DVC pipeline.

Each task takes a composed Hydra config and a run folder; the scripts at the top stay short.
"""
