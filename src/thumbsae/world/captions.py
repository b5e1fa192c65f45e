"""Words for the world's images: CLIP training captions and YouTube-like titles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from thumbsae.errors import ThumbsaeError

MOTIF_PHRASES: dict[str, str] = {
    "food": "food on a plate",
    "sports_field": "a sports field with small players",
    "face": "a close-up of a shocked face",
    "text_overlay": "bold text",
    "red_arrow": "a red arrow",
    "animal": "an animal silhouette",
    "car": "a car",
    "outdoor_long_shot": "a long shot of a landscape",
    "indoor_room": "an indoor room",
    "night_scene": "a city at night",
    "flower": "a flower",
    "tree": "a tree",
    "house": "a house",
    "shapes": "geometric shapes",
    "plain": "nothing",
}
SCENE_PHRASES: dict[str, str] = {
    "studio": "a plain background",
    "gradient": "a gradient background",
    "split": "a split background",
    "burst": "a sunburst background",
    "bokeh": "a bokeh background",
}
_TITLE_HOOKS: dict[str, tuple[str, ...]] = {
    "food": ("I Ate The World's Biggest Burger", "Cooking For 24 Hours", "Street Food Tour"),
    "sports_field": ("Full Match Highlights", "Amateur League Round 7", "Training Session Vlog"),
    "face": ("You Won't Believe What Happened", "My Honest Reaction", "I Can't Believe This"),
    "text_overlay": ("Top 10 Secrets", "The Ultimate Guide", "Watch Till The End"),
    "red_arrow": ("Look Closely", "Did You Notice This", "Hidden Detail Explained"),
    "animal": ("Rescuing A Wild Animal", "My Pet Does Tricks", "Animals In The Wild"),
    "car": ("Buying My Dream Car", "Supercar Review", "Road Trip Day 3"),
    "outdoor_long_shot": ("Hiking The Longest Trail", "A Week In The Mountains", "Drone Views"),
    "indoor_room": ("Room Makeover", "Apartment Tour", "Cleaning My Whole House"),
    "night_scene": ("City Walk At Night", "Night Time Ambience", "Overnight Challenge"),
}


def _warmth_word(warmth: float) -> str:
    if warmth > 1 / 3:
        return "warm"
    if warmth < -1 / 3:
        return "cool"
    return "neutral"


def caption_for(motifs: Sequence[str], scene: str, warmth: float) -> str:
    """The training caption of an image with `motifs` on `scene` at palette `warmth` in [-1, 1].

    The same content always gives the same caption (motifs in the order given), for example
    "a warm thumbnail of food on a plate and a red arrow on a sunburst background".
    """
    if scene not in SCENE_PHRASES:
        raise ThumbsaeError(f"unknown scene {scene!r}; expected one of {', '.join(SCENE_PHRASES)}")
    unknown = [m for m in motifs if m not in MOTIF_PHRASES]
    if unknown:
        raise ThumbsaeError(
            f"unknown motif(s) {unknown}; expected names from MOTIFS or DISTRACTORS"
        )
    phrases = [MOTIF_PHRASES[m] for m in motifs if m != "plain"]
    if not phrases:
        content = "nothing"
    elif len(phrases) == 1:
        content = phrases[0]
    else:
        content = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"a {_warmth_word(warmth)} thumbnail of {content} on {SCENE_PHRASES[scene]}"


def title_for(motifs: Sequence[str], rng: np.random.Generator) -> str:
    """A YouTube-like title hinting at the first motif (shown in panels and reports)."""
    hooks = _TITLE_HOOKS.get(motifs[0], ("New Video",)) if motifs else ("New Video",)
    title = hooks[int(rng.integers(len(hooks)))]
    if rng.random() < 0.3:
        title += " (GONE WRONG)" if rng.random() < 0.5 else "!!"
    return title
