"""How ``scenecls inspect`` looks, each option declared once with its default, range and help (the
command-line options are made from these fields), and the thresholds that were measured for it.

Nothing here imports NumPy or TensorFlow: ``scenecls inspect --help`` reads these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from scenecls.config_fields import batch_size_field, option_field

# Measured on intel-dev's 7,500 images with MobileNetV2's ImageNet features at its own 150 px, every
# candidate pair looked at (benchmarks/README.md, "Know your data"):
HASH_DISTANCE = 4  # of 64 bits. Flat images (a calm sea, a sky) share hashes without being one picture...
HASH_CONFIRMATION = 0.79  # ...so, with features, a hash pair is kept only from this cosine up (all such were)
FEATURE_SIMILARITY = 0.93  # cosine alone: crops and shifts change the hash. Different forests reach 0.90
# The lowest threshold a user may ask for: on intel-mini at 0.85, different forests formed groups (looked
# at); 0.88 and 0.90 grouped only one picture. Near copies are always looked for at the backbone's own
# input size, where these were measured: at 96 px, 0.93 put 15 different forests in one group.
SIMILARITY_FLOOR = 0.9


@dataclass(frozen=True)
class InspectOptions:
    """How to look. ``backbone``/``weights``/``image_size`` as ``train`` takes them; ``features`` False
    skips the model (no feature near-duplicates, no label errors: hashes and counts only)."""

    backbone: str = option_field(
        "xception", "Backbone whose features find near copies and doubt labels.", kind="backbone"
    )
    weights: str = "imagenet"
    image_size: int | None = None
    batch_size: int = batch_size_field()
    folds: int = option_field(
        5,
        "Folds of the cross-validation that predicts each image's class without it.",
        kind="int",
        low=2,
        high=20,
    )
    hash_distance: int = option_field(
        HASH_DISTANCE,
        "Near copies: perceptual hashes within this many of 64 bits (confirmed by the features).",
        kind="int",
        low=0,
        high=16,
    )
    similarity: float = option_field(
        FEATURE_SIMILARITY,
        "Near copies: cosine similarity of the features from which two images are one picture "
        "(features at the backbone's own input size, where this threshold was measured).",
        kind="float",
        low=SIMILARITY_FLOOR,
        high=1.0,
    )
    features: bool = True
    seed: int = 0
