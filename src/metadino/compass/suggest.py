"""From measured effects to a ``guidance:`` block.

**Effect** of an arm (a column encouraged or suppressed): the paired differences, seed by seed, between the arm's
score and the no-guide run's score of the same seed; their mean and two-sided 95 % t-interval (n − 1 degrees of
freedom; none with one seed).

**Rules** (each guide's comment in the block says which one applied):

1. a role is kept only when its effect's interval lies above zero (lower end > 0); with both roles above zero
   (possible with noisy short runs) the one with the larger mean is kept and the other named;
2. a column whose suppression *hurt* (interval below zero: upper end < 0), that is not kept in any role, and that
   nearly determines a column kept as encouraged (the audit's :func:`~metadino.audit.stats.determines`) is
   suggested as **conditional suppression** ``given: [that column]`` — FINO's rule: never suppress an entangled
   factor alone, pair it with an encouraged anchor. That guide was *not* measured by the sweep; its comment says so;
3. every other column is left unguided, listed in a comment with both effects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from metadino.errors import UserError


@dataclass
class Effect:
    """Paired differences arm − no guide over the seeds both finished."""

    diffs: list[float]
    mean: float
    lo: float  # NaN with fewer than two seeds
    hi: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def above_zero(self) -> bool:
        return self.n >= 2 and self.lo > 0

    @property
    def below_zero(self) -> bool:
        return self.n >= 2 and self.hi < 0

    def text(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (1 seed, no interval)"
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}]"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "lo": None if math.isnan(self.lo) else self.lo,
                "hi": None if math.isnan(self.hi) else self.hi, "n": self.n, "diffs": self.diffs}


def interval(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95 % t-interval of paired differences (NaN bounds with fewer than two)."""
    from scipy.stats import t

    n = len(diffs)
    if n == 0:
        raise ValueError("no differences")
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_effect(arm: Mapping[int, float], none: Mapping[int, float]) -> Effect | None:
    """The effect of `arm` (seed -> score) against the no-guide run (seed -> score), over their common seeds."""
    seeds = sorted(set(arm) & set(none))
    if not seeds:
        return None
    diffs = [arm[s] - none[s] for s in seeds]
    mean, lo, hi = interval(diffs)
    return Effect(diffs, mean, lo, hi)


@dataclass
class SuggestedGuide:
    column: str
    role: str  # encouraged | suppressed
    guide: dict[str, Any]  # the guidance.guides entry
    why: str
    measured: bool = True  # False: conditional suppression the sweep did not run


@dataclass
class Suggestion:
    guides: list[SuggestedGuide] = field(default_factory=list)
    not_guided: list[tuple[str, str]] = field(default_factory=list)  # (column, why)
    notes: list[str] = field(default_factory=list)


def _effects_text(column: str, effects: Mapping[tuple[str, str], Effect | None]) -> str:
    parts = []
    for role in ("encouraged", "suppressed"):
        e = effects.get((column, role))
        parts.append(f"{role} {e.text() if e is not None else 'not measured'}")
    return ", ".join(parts)


def suggest(columns: Sequence[str], effects: Mapping[tuple[str, str], Effect | None],
            guides: Mapping[tuple[str, str], Mapping[str, Any]], determines: Mapping[str, Sequence[str]]) -> Suggestion:
    """Apply the module's rules. `effects[(column, role)]` is None when a role has no finished pair; `guides` are
    the trials' guide entries; `determines[column]` lists the candidates that column nearly determines."""
    out = Suggestion()
    kept: dict[str, str] = {}
    for column in columns:
        enc, sup = effects.get((column, "encouraged")), effects.get((column, "suppressed"))
        up = [(role, e) for role, e in (("encouraged", enc), ("suppressed", sup)) if e is not None and e.above_zero]
        if up:
            role, effect = max(up, key=lambda r: r[1].mean)
            kept[column] = role
            why = f"{role}: paired effect {effect.text()} (interval above zero)"
            if len(up) == 2:
                other = "suppressed" if role == "encouraged" else "encouraged"
                why += f"; {other} was above zero too ({dict(up)[other].text()}), the larger mean is kept"
                out.notes.append(f"'{column}': both roles helped ({_effects_text(column, effects)}); a sign the effect "
                                 "is not about the column itself — check it with more seeds or steps")
            out.guides.append(SuggestedGuide(column, role, dict(guides[(column, role)]), why))
    encouraged = [c for c, role in kept.items() if role == "encouraged"]
    for column in columns:
        if column in kept:
            continue
        sup = effects.get((column, "suppressed"))
        anchors = [c for c in encouraged if c in determines.get(column, ())]
        guide = guides.get((column, "suppressed"))
        if sup is not None and sup.below_zero and anchors and guide is not None and guide.get("head") != "prototypical":
            conditional = {**dict(guide), "given": anchors}
            why = (f"suppressing '{column}' alone hurt ({sup.text()}) and it nearly determines encouraged "
                   f"{', '.join(repr(a) for a in anchors)}: suppress only what {', '.join(anchors)} does not explain "
                   "(FINO: never suppress an entangled factor alone). NOT measured by this sweep: verify it")
            out.guides.append(SuggestedGuide(column, "suppressed", conditional, why, measured=False))
            continue
        out.not_guided.append((column, _effects_text(column, effects)))
    return out


def _flow(mapping: Mapping[str, Any]) -> str:
    text: str = yaml.safe_dump(dict(mapping), default_flow_style=True, sort_keys=False, allow_unicode=True,
                               width=10_000)
    return text.strip()


def guidance_yaml(suggestion: Suggestion, *, settings: Mapping[str, Any], header: Sequence[str]) -> str:
    """The suggested ``guidance:`` block: `settings` (the config's other guidance keys, as the trials used them),
    then one flow-style guide per line under a comment saying why."""
    lines = ["guidance:", *(f"  # {h}" for h in header)]
    for key, value in settings.items():
        lines.append(f"  {key}: {_flow(value) if isinstance(value, dict) else yaml.safe_dump(value).splitlines()[0]}")
    if not suggestion.guides:
        lines.append("  guides: []  # no role had a paired effect above zero")
    else:
        lines.append("  guides:")
        for g in suggestion.guides:
            lines.append(f"    # {' '.join(g.why.split())}")
            lines.append(f"    - {_flow(g.guide)}")
    if suggestion.not_guided:
        lines.append("  # not guided (no interval above zero):")
        lines += [f"  #   {column}: {why}" for column, why in suggestion.not_guided]
    text = "\n".join(lines) + "\n"
    parsed = yaml.safe_load(text)  # the block must read back as what it says
    if not isinstance(parsed, dict) or len(parsed["guidance"]["guides"] or []) != len(suggestion.guides):
        raise UserError("internal error: the suggested guidance block does not read back")  # pragma: no cover
    return text


__all__ = ["Effect", "SuggestedGuide", "Suggestion", "guidance_yaml", "interval", "paired_effect", "suggest"]
