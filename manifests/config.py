"""What every config raises for a setting that cannot work: the build's stage configs (`stages/`, each a
`@dataclass(kw_only=True, slots=True)` next to the code that uses it, validated in `__post_init__`), the recipe
that composes them (`pipeline/build/recipe.py`, which adds the section's path to `field`), and the trainer's
presets and flags (`trainer/config.py`, `trainer/train.py`). It lives in `manifests` because that is the one
package both `stages` and `trainer` may import."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; `field` names it (inside its section, dotted for a nested setting; for the
    trainer, the flag or preset with the value given) and the message says the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
