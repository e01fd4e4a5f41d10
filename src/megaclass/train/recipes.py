"""Named training recipes: the data and options that made a shipped model, reproducible.

``megaclass train --recipe NAME -m OUT`` trains exactly what the recipe says; any option
given on the command line as well overrides the recipe's value (the data argument too).
``bench recipe`` measures a recipe against variants of it, side by side.

Example
-------
>>> r = RECIPES["demo"]
>>> r.data, r.options["steps"]
('glyphs:0-2000', 520)
>>> recipe("nope")
Traceback (most recent call last):
...
megaclass.errors.ConfigError: unknown recipe 'nope'; choose one of demo, reference, reference-v1, reference-v2
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Training data (``glyphs:`` spec or folder), drawings per class, TrainConfig options."""

    name: str
    data: str
    samples_per_class: int
    options: dict = field(default_factory=dict)
    summary: str = ""

    def with_(self, name: str | None = None, *, data: str | None = None,
              samples_per_class: int | None = None, **options) -> Recipe:
        """A variant of the recipe (for comparisons): some options changed."""
        return Recipe(name or self.name, data or self.data, samples_per_class or self.samples_per_class,
                      {**self.options, **options}, self.summary)


#: what every reference model's training shares (the versions differ in the network)
_REFERENCE_TRAINING = {"head": "cosface", "scale": 16.0, "margin": 0.2, "steps": 10000, "batch_size": 256,
                       "checkpoint_every": 500}

RECIPES: dict[str, Recipe] = {
    "demo": Recipe(
        "demo", "glyphs:0-2000", 64,
        {"head": "cosface", "scale": 16.0, "margin": 0.2, "steps": 520, "batch_size": 256, "dim": 256},
        "the demo's 4-minute model: 2,000 classes, CosFace s=16 m=0.2, 520 steps, 256-d embeddings "
        "(128-d until 2026-11-30: the recipe table measured 256 better at no speed cost)"),
    "reference": Recipe(
        "reference", "glyphs:0-20000", 32,
        {**_REFERENCE_TRAINING, "dim": 256, "backbone": "resnet:widths=48,96,192;blocks=2"},
        "the shipped reference model: 20,000 classes with fresh drawings every epoch, "
        "CosFace s=16 m=0.2, 10,000 steps, a 1.5x wider network with two blocks per stage, "
        "256-d embeddings (see README, 'Reference model')"),
    "reference-v2": Recipe(
        "reference-v2", "glyphs:0-20000", 32,
        {**_REFERENCE_TRAINING, "dim": 256, "backbone": "resnet:widths=48,96,192;blocks=1"},
        "the second reference model (shipped as 'reference-v2'): the same data and steps with "
        "one block per stage"),
    "reference-v1": Recipe(
        "reference-v1", "glyphs:0-20000", 32, dict(_REFERENCE_TRAINING),
        "the reference model until 2026-12-01 (shipped as 'reference-v1'): the same data and "
        "steps with widths 32/64/128 and 128-d embeddings"),
}


def recipe(name: str) -> Recipe:
    """The recipe called ``name`` (ConfigError naming the choices otherwise)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}") from None
