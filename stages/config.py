"""What every stage's config raises for a setting that cannot work. Stage configs are
`@dataclass(kw_only=True, slots=True)` classes next to the code that uses them, validated in `__post_init__`;
the recipe (in `pipeline/`) composes them and adds the section's path to `field`."""
from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; `field` is its name inside its section (dotted for a nested setting) and the
    message says the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
