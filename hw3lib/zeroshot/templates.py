"""Prompt templates for zero-shot classification: data only. `{object}` stands for the class name.

Built-in sets (`--templates NAME`):
  report    the original report's three prompts (60.9 / 65.4 / 56.4 % on the HW3 val set)
  photo     "a photo of a {object}." - CLIP's default single prompt
  openai80  OpenAI's 80 ImageNet prompt templates (as shipped by open_clip)
  openai7   the 7 templates the CLIP authors selected from the 80 (CLIP notebook; open_clip's copy)
"""

from __future__ import annotations

from ..core.errors import HW3Error

REPORT = ("This is a photo of {object}", "This is not a photo of {object}", "No {object}, no score.")
PHOTO = ("a photo of a {object}.",)


def _open_clip_set(name: str) -> tuple[str, ...]:
    """One of open_clip's template lists; it stores them as callables, and calling one with the
    placeholder recovers the format string."""
    from open_clip import zero_shot_metadata

    return tuple(t("{object}") for t in getattr(zero_shot_metadata, name))


def openai7() -> tuple[str, ...]:
    """The 7 templates the CLIP authors selected from the 80 (open_clip's SIMPLE_IMAGENET_TEMPLATES)."""
    return _open_clip_set("SIMPLE_IMAGENET_TEMPLATES")


def template_set(name: str) -> tuple[str, ...]:
    sets = {"report": lambda: REPORT, "photo": lambda: PHOTO,
            "openai80": lambda: _open_clip_set("OPENAI_IMAGENET_TEMPLATES"), "openai7": openai7}
    if name not in sets:
        raise HW3Error(f"unknown template set {name!r} (choose from {', '.join(sets)})")
    return sets[name]()


def check_template(t: str) -> str:
    """A prompt template: text with `{object}` fields and nothing else a format string can do (no
    format specs or conversions: `{object:>20000000000}` would build a 20 GB string)."""
    import string

    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(t) if name is not None]
    except ValueError as e:
        raise HW3Error(f"template {t!r} is not a valid format string ({e})") from e
    for name, spec, conv in fields:
        if name != "object" or spec or conv:
            raise HW3Error(f"template {t[:80]!r}: field {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                           "is not allowed; a template may only hold {object}")
    if not fields:
        raise HW3Error(f"template {t!r} has no {{object}} placeholder")
    return t


def fill(template: str, name: str) -> str:
    return template.format(object=name)
