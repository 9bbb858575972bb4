"""The postprocessing thresholds of one class: the config's blocks (`model.<family>.thresholds`,
`tune.ensemble.thresholds`) validate into this type, and postprocessing applies it."""

from __future__ import annotations

from dataclasses import dataclass, field


def _described(default: float | int | None, description: str):
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class ClassThresholds:
    """Postprocessing thresholds of one class.

    Each family's config block holds its own defaults (`model.<family>.thresholds`): validation
    paints with them, `tune` starts from them, `postprocess` uses them for classes it did not tune.
    """

    score: float = _described(0.5, "keep instances scoring at least this")
    mask: float = _described(0.5, "mask probability at which a pixel belongs to the instance")
    min_area: int = _described(10, "pixels an instance must keep after overlap removal")
    min_keep: float = _described(0.0, "fraction of its own area an instance must keep")
    max_error: float | None = _described(
        None,
        "the family's per-instance error must be at most this; None: no limit (families without "
        "an error measure report 0)",
    )

    # read by pydantic when a config block holds these: unknown keys are mistakes
    __pydantic_config__ = {"extra": "forbid"}
