"""A tiny PASCAL VOC tree in the real on-disk format (JPEG images, devkit XML, ImageSets lists)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

OBJECT_CLASSES = ("bottle", "pottedplant", "car", "person")
COLOURS = {"bottle": (30, 160, 40), "pottedplant": (200, 40, 40), "car": (40, 60, 220), "person": (230, 200, 30)}


def annotation_xml(name: str, width: int, height: int, objects: Sequence[Tuple[str, Tuple[int, int, int, int], bool]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for c, b, d in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
            f"<source><database>The VOC2007 Database</database></source>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def make_fake_voc(root: Path, n_trainval: int = 6, n_test: int = 4, seed: int = 0,
                  sizes: Sequence[Tuple[int, int]] = ((96, 72), (80, 80), (72, 96))) -> Dict[str, List]:
    """Write ``root/VOCdevkit/VOC2007`` with ``n_trainval`` + ``n_test`` images; each has 1-2
    coloured rectangles (VOC 1-based inclusive pixel boxes), the second of image 0 of each split
    marked difficult. Returns ``{image id: [(class, box, difficult), ...]}``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    base = Path(root) / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / d).mkdir(parents=True, exist_ok=True)
    splits = {"trainval": [f"{i:06d}" for i in range(n_trainval)],
              "test": [f"{i:06d}" for i in range(n_trainval, n_trainval + n_test)]}
    truth: Dict[str, List] = {}
    for split, ids in splits.items():
        for k, name in enumerate(ids):
            w, h = sizes[(k + (split == "test")) % len(sizes)]
            img = Image.new("RGB", (w, h), (rng.randint(90, 140),) * 3)
            draw = ImageDraw.Draw(img)
            objects = []
            for j in range(1 + (k % 2 == 0)):
                c = OBJECT_CLASSES[(k + j) % len(OBJECT_CLASSES)]
                x1 = rng.randint(1, w // 2 - 8) if j == 0 else rng.randint(w // 2, w - 24)
                y1 = rng.randint(1, h // 2)
                x2, y2 = min(w, x1 + rng.randint(16, 30)), min(h, y1 + rng.randint(16, 30))
                draw.rectangle([x1 - 1, y1 - 1, x2 - 1, y2 - 1], fill=COLOURS[c])
                objects.append((c, (x1, y1, x2, y2), k == 0 and j == 1))
            img.save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            (base / "Annotations" / f"{name}.xml").write_text(annotation_xml(name, w, h, objects))
            truth[name] = objects
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return truth
