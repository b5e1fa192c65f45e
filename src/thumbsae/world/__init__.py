"""The synthetic thumbnail world: YouTube-like thumbnails whose views follow a known model.

`generate_world(WorldConfig(...), out_dir)` writes the manifests, images and ground truth that the
embedded default studies; `draw_thumbnail` draws one image (the video test generator uses it) and
`caption_for` gives the caption the tiny world CLIP is trained on.
"""

from thumbsae.world.captions import MOTIF_PHRASES, SCENE_PHRASES, caption_for, title_for
from thumbsae.world.config import DEFAULT_EFFECTS, WorldConfig
from thumbsae.world.drawing import DISTRACTORS, MOTIFS, SCENES, draw_thumbnail
from thumbsae.world.generate import REFERENCE_COLUMNS, THUMBNAIL_COLUMNS, generate_world
from thumbsae.world.population import FORMULA, WorldPlan, plan_world, settings_differing

__all__ = [
    "DEFAULT_EFFECTS",
    "DISTRACTORS",
    "FORMULA",
    "MOTIFS",
    "MOTIF_PHRASES",
    "REFERENCE_COLUMNS",
    "SCENES",
    "SCENE_PHRASES",
    "THUMBNAIL_COLUMNS",
    "WorldConfig",
    "WorldPlan",
    "caption_for",
    "draw_thumbnail",
    "generate_world",
    "plan_world",
    "settings_differing",
    "title_for",
]
