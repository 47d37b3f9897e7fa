"""CHAIR (Rohrbach et al. 2018, "Object Hallucination in Image Captioning") for COCO-style captions.

Object words are mapped to the 80 COCO categories through a synonym table (`SYNONYMS`: plurals and
two-word names such as "hot dog" or "teddy bear"; a two-word name is matched before its words). An
image's ground-truth categories are those its reference captions mention, plus, when a COCO instances
file is given, the categories of its annotated objects. Per caption, each category counts once:

- CHAIR-i = hallucinated categories / mentioned categories (pooled over captions);
- CHAIR-s = captions that mention at least one category the image does not hold / captions;
- recall  = ground-truth categories the caption mentions / ground-truth categories (pooled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# category -> the words and phrases that name it (singular; `_plurals` adds the plural forms)
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "man", "woman", "boy", "girl", "child", "kid", "baby", "lady", "guy", "adult",
               "gentleman", "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "pedestrian",
               "teenager", "toddler", "people"),
    "bicycle": ("bicycle", "bike", "cycle"), "car": ("car", "taxi", "sedan", "suv", "jeep"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter", "moped"),
    "airplane": ("airplane", "aeroplane", "plane", "jet", "aircraft", "airliner"), "bus": ("bus",),
    "train": ("train", "locomotive", "tram"), "truck": ("truck", "lorry", "pickup truck"),
    "boat": ("boat", "ship", "sailboat", "kayak", "canoe", "yacht", "ferry"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"), "stop sign": ("stop sign",),
    "parking meter": ("parking meter",), "bench": ("bench",),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "parrot", "sparrow", "owl", "swan"),
    "cat": ("cat", "kitten", "kitty"), "dog": ("dog", "puppy", "pup"), "horse": ("horse", "pony", "foal"),
    "sheep": ("sheep", "lamb"), "cow": ("cow", "cattle", "bull", "calf", "ox"), "elephant": ("elephant",),
    "bear": ("bear", "polar bear", "grizzly"), "zebra": ("zebra",), "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "rucksack"), "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse"), "tie": ("tie", "necktie"),
    "suitcase": ("suitcase", "suit case", "luggage"), "frisbee": ("frisbee",), "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball", "volleyball"),
    "kite": ("kite",), "baseball bat": ("baseball bat", "bat"), "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"), "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet"), "bottle": ("bottle",),
    "wine glass": ("wine glass",), "cup": ("cup", "mug"), "fork": ("fork",), "knife": ("knife",),
    "spoon": ("spoon",), "bowl": ("bowl",), "banana": ("banana",), "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger"), "orange": ("orange",), "broccoli": ("broccoli",),
    "carrot": ("carrot",), "hot dog": ("hot dog", "hotdog"), "pizza": ("pizza",), "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"), "chair": ("chair", "stool"), "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "house plant", "flower pot"), "bed": ("bed",),
    "dining table": ("dining table", "table"), "toilet": ("toilet",),
    "tv": ("tv", "television", "tv monitor"), "laptop": ("laptop", "notebook computer"),
    "mouse": ("mouse", "computer mouse"), "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard",), "cell phone": ("cell phone", "cellphone", "phone", "smartphone", "mobile phone"),
    "microwave": ("microwave",), "oven": ("oven", "stove"), "toaster": ("toaster",), "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"), "book": ("book",), "clock": ("clock",), "vase": ("vase",),
    "scissors": ("scissors",), "teddy bear": ("teddy bear", "teddy", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "blow dryer"), "toothbrush": ("toothbrush", "tooth brush"),
}
IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "persons", "mouse": "mice",
             "knife": "knives", "goose": "geese", "ox": "oxen", "calf": "calves", "sheep": "sheep",
             "scissors": "scissors", "skis": "skis", "cattle": "cattle", "people": "people", "bus": "buses",
             "glass": "glasses", "sandwich": "sandwiches", "couch": "couches", "bench": "benches", "pony": "ponies",
             "puppy": "puppies", "kitty": "kitties", "lady": "ladies", "baby": "babies", "broccoli": "broccoli"}


def _plural(word: str) -> str:
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def _phrase_table() -> dict[tuple[str, ...], str]:
    """Word tuple (singular or plural; the plural on the last word) -> category."""
    table = {}
    for category, names in SYNONYMS.items():
        for name in names:
            w = tuple(name.split())
            table[w] = category
            table[w[:-1] + (_plural(w[-1]),)] = category
    return table


PHRASES = _phrase_table()
LONGEST = max(len(p) for p in PHRASES)


def categories_in(text: str) -> list[str]:
    """The COCO categories a text names, in order (longest phrase first at each position)."""
    w = re.findall(r"[a-z]+", text.lower())
    out, i = [], 0
    while i < len(w):
        for n in range(min(LONGEST, len(w) - i), 0, -1):
            cat = PHRASES.get(tuple(w[i:i + n]))
            if cat is not None:
                out.append(cat)
                i += n
                break
        else:
            i += 1
    return out


@dataclass(frozen=True)
class ChairImage:
    """One caption against its image's ground-truth categories."""
    mentioned: tuple[str, ...]  # categories the caption names (each once, sorted)
    truth: tuple[str, ...]  # the image's ground-truth categories (sorted)

    @property
    def hallucinated(self) -> tuple[str, ...]:
        return tuple(c for c in self.mentioned if c not in self.truth)

    @property
    def found(self) -> tuple[str, ...]:
        return tuple(c for c in self.truth if c in self.mentioned)

    def to_json(self) -> dict:
        return {"mentioned": list(self.mentioned), "truth": list(self.truth), "hallucinated": list(self.hallucinated)}


@dataclass
class Chair:
    per_image: dict[str, ChairImage]  # image key -> its caption's counts

    def _pooled(self, num, den) -> float | None:
        d = sum(den(x) for x in self.per_image.values())
        return None if d == 0 else sum(num(x) for x in self.per_image.values()) / d

    @property
    def chair_i(self) -> float | None:
        return self._pooled(lambda x: len(x.hallucinated), lambda x: len(x.mentioned))

    @property
    def chair_s(self) -> float | None:
        return self._pooled(lambda x: bool(x.hallucinated), lambda x: 1)

    @property
    def recall(self) -> float | None:
        return self._pooled(lambda x: len(x.found), lambda x: len(x.truth))

    def to_json(self) -> dict:
        return {"CHAIR_i": self.chair_i, "CHAIR_s": self.chair_s, "object_recall": self.recall,
                "images": len(self.per_image)}


def instance_categories(path: str | Path) -> dict[str, set[str]]:
    """{image file stem: categories} from a COCO instances file (images, annotations, categories)."""
    from ..core.errors import HW3Error
    from ..core.files import read_json

    doc = read_json(path)
    try:
        names = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        stems = {int(im["id"]): Path(str(im["file_name"])).stem for im in doc["images"]}
        out: dict[str, set[str]] = {s: set() for s in stems.values()}
        for a in doc["annotations"]:
            out[stems[int(a["image_id"])]].add(names[int(a["category_id"])])
    except (KeyError, TypeError, ValueError) as e:
        raise HW3Error(f"{path}: not a COCO instances file (needs images, annotations and categories; "
                       f"{type(e).__name__}: {e})") from e
    unknown = {c for cs in out.values() for c in cs} - set(SYNONYMS)
    if unknown:
        raise HW3Error(f"{path}: categories outside COCO's 80: {', '.join(sorted(unknown)[:5])}")
    return out


def chair(predictions: dict[str, str], references: dict[str, list[str]],
          instances: dict[str, set[str]] | None = None) -> Chair:
    """CHAIR of `predictions` (key -> caption) against categories from `references` (key -> captions)
    and, when given, `instances` (key -> annotated categories)."""
    per = {}
    for key in sorted(predictions):
        truth = {c for ref in references.get(key, []) for c in categories_in(ref)}
        truth |= (instances or {}).get(key, set())
        per[key] = ChairImage(tuple(sorted(set(categories_in(predictions[key])))), tuple(sorted(truth)))
    return Chair(per)
