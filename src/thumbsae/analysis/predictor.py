"""Where the engagement model used to live; its code is now `thumbsae.analysis.engagement`.

Kept so `from thumbsae.analysis.predictor import ...` goes on working for existing callers.
"""

from thumbsae.analysis.engagement import (  # noqa: F401
    TARGET_KINDS,
    EngagementConfig,
    EngagementModel,
    fit_engagement_model,
    pairwise_accuracy,
    split_by_channel,
)
from thumbsae.analysis.engagement.io import CONFIG_FILE, EXAMPLES_DIR, FORMAT, MODEL_FILE  # noqa: F401
