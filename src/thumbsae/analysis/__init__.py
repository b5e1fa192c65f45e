"""thumbsae.analysis: from thumbnails' SAE latents to findings about views.

Import from the modules, not from here:
- `latents`: sparse latents of thumbnails (`encode_latents`, `LatentMatrix`).
- `groups`: every feature's top thumbnails and its held-out one (`top_groups`, `FeatureGroups`).
- `stats`: group statistics, the study's tests, nulls, p-values, BH, CIs.
- `adjust`: views relative to the channel and upload age (`adjust_views`).
- `study`: the whole feature-group study (`EvalConfig`, `run_feature_study`, `write_study`).
- `recovery`: what the study found against a synthetic world's ground truth (`recovery_report`).
- `names`: feature names. `engagement`: the engagement model (config, fit, I/O, pairwise probabilities).
"""
