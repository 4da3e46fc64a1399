"""ADE20K's scene-parsing release (ADEChallengeData2016), as distributed and as mmsegmentation reads it.

Layout: ``images/training/*.jpg``, ``images/validation/*.jpg``, ``annotations/training/*.png``,
``annotations/validation/*.png`` (a mask per image, same stem). Mask values are 0 = "other objects" and 1..150
the classes; loading applies the official ``reduce_zero_label`` convention: 0 becomes the ignore index 255 and
every other value drops by one, so class i of the 150 names below is label i. ``training`` is the train split and
``validation`` the test split (the benchmark's own evaluation split; no labelled test set is public);
``val_images`` > 0 holds out that many training images, chosen by a seeded shuffle, for model selection.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.data.formats.segmasks import ParsedSegmentation, list_files, list_image_files, pair_by_stem

LAYOUT = ("<root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/*.png "
          "(ADEChallengeData2016)")

# The 150 class names of the SceneParsing benchmark (objectInfo150), in label order 1..150.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
if len(ADE20K_CLASSES) != 150:
    raise RuntimeError(f"ADE20K has 150 classes; the table lists {len(ADE20K_CLASSES)}")


@dataclass
class Ade20kOptions:
    """Options of the ADE20K reader."""

    val_images: int = field(default=0, metadata={
        "help": "training images held out as a validation split (seeded); 0: no validation split",
        "range": (0, None)})
    split_seed: int = field(default=0, metadata={"help": "seed of the validation hold-out"})


def parse_ade20k(root: Path, options: Ade20kOptions) -> ParsedSegmentation:
    splits, problems = {}, []
    for role, folder in (("train", "training"), ("test", "validation")):
        images = list_image_files(root / "images" / folder)
        masks = list_files(root / "annotations" / folder, (".png",))
        pairs, found = pair_by_stem(images, masks, root, folder)
        splits[role], problems = pairs, problems + found
    if options.val_images:
        train = list(splits["train"])
        random.Random(f"ade20k:{options.split_seed}").shuffle(train)
        held = {p.image for p in train[: options.val_images]}
        splits["val"] = [p for p in splits["train"] if p.image in held]
        splits["train"] = [p for p in splits["train"] if p.image not in held]
    return ParsedSegmentation("ade20k", "ade20k", root, list(ADE20K_CLASSES), splits, ignore_index=255,
                              reduce_zero_label=True, problems=problems)
