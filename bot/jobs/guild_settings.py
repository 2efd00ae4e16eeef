"""A server's own settings (``/jamadmin config``) laid over the bot's defaults (the environment).

Server settings tighten the bot's limits and never loosen them: whoever runs the bot pays
Replicate, so the environment's numbers are ceilings (the daily budget, the per-member quota,
the longest duration) or a floor (the cooldown). Where the environment sets no cap (0), a
server may choose any. The rule is applied twice: :func:`apply_change` refuses a value past
the bot's limit with a sentence, and :func:`resolve` clamps again, so an operator who lowers
an environment value later lowers every server's too.

A server's per-member quota counts the member's tracks in that server; the environment's
quota keeps counting all of them. Blocked words match whole words, case-insensitively, after
invisible characters are removed (a zero-width space inside a word would otherwise hide it).
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Protocol

from bot.music.request import ModelVersion

if TYPE_CHECKING:
    from bot.jobs.database import Row

MODELS: tuple[str, ...] = tuple(model.value for model in ModelVersion)
MAX_BLOCKED_WORDS = 200
MAX_WORD_LENGTH = 50
RESETTABLE = (
    "daily_budget",
    "daily_quota",
    "cooldown",
    "max_duration",
    "models",
    "blocked_words",
)
# The option names of /jamadmin config → the fields of GuildSettings they reset.
_RESET_FIELDS = {
    "daily_budget": "daily_budget_usd",
    "daily_quota": "daily_quota",
    "cooldown": "cooldown_seconds",
    "max_duration": "max_duration",
    "models": "allowed_models",
    "blocked_words": "blocked_words",
}


class SettingError(ValueError):
    """A server setting that can't be stored; the message is one sentence for the admin."""


@dataclass(frozen=True)
class GuildSettings:
    """What a server changed. None (or no words) means the bot's default."""

    daily_budget_usd: float | None = None
    daily_quota: int | None = None
    cooldown_seconds: float | None = None
    max_duration: int | None = None
    allowed_models: tuple[str, ...] | None = None
    blocked_words: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Row) -> GuildSettings:
        models = row["allowed_models"]
        return cls(
            daily_budget_usd=row["daily_budget_usd"],
            daily_quota=row["daily_quota"],
            cooldown_seconds=row["cooldown_seconds"],
            max_duration=row["max_duration"],
            allowed_models=tuple(models.split(",")) if models else None,
            blocked_words=tuple(w for w in row["blocked_words"].split(",") if w),
        )

    def columns(self) -> tuple[float | int | str | None, ...]:
        """The values of the guild_settings columns, in the table's order."""
        models = ",".join(self.allowed_models) if self.allowed_models is not None else None
        return (
            self.daily_budget_usd,
            self.daily_quota,
            self.cooldown_seconds,
            self.max_duration,
            models,
            ",".join(self.blocked_words),
        )


@dataclass(frozen=True)
class BotDefaults:
    """The environment's values, which every server starts from (0: no cap, no quota)."""

    daily_budget_usd: float
    daily_quota: int
    cooldown_seconds: float
    max_duration: int


@dataclass(frozen=True)
class Rules:
    """What applies to one command in one server (or a DM: the bot's defaults)."""

    guild_id: int | None
    daily_budget_usd: float  # 0: no cap
    daily_quota: int | None  # the server's own per-member quota; None: only the bot's
    cooldown_seconds: float
    max_duration: int
    allowed_models: tuple[str, ...]
    blocked_words: tuple[str, ...]

    def allows(self, model: str) -> bool:
        return model in self.allowed_models

    def blocks(self, prompt: str) -> bool:
        """Whether the prompt contains a blocked word or phrase, as a whole word."""
        if not self.blocked_words:
            return False
        text = _plain(prompt)
        return any(_word_pattern(word).search(text) for word in self.blocked_words)


def resolve(guild_id: int | None, settings: GuildSettings | None, defaults: BotDefaults) -> Rules:
    """The rules for a server: its settings, held within the bot's limits."""
    own = settings or GuildSettings()
    quota = own.daily_quota or None
    if quota is not None and defaults.daily_quota:
        quota = min(quota, defaults.daily_quota)
    return Rules(
        guild_id=guild_id,
        daily_budget_usd=_tighter_cap(own.daily_budget_usd, defaults.daily_budget_usd),
        daily_quota=quota,
        cooldown_seconds=max(own.cooldown_seconds or 0.0, defaults.cooldown_seconds),
        max_duration=min(own.max_duration or defaults.max_duration, defaults.max_duration),
        allowed_models=own.allowed_models or MODELS,
        blocked_words=own.blocked_words,
    )


def _tighter_cap(own: float | None, default: float) -> float:
    """The smaller of two caps where 0 means none."""
    if own is None:
        return default
    if not own or not default:
        return own or default
    return min(own, default)


@dataclass(frozen=True)
class Change:
    """What one /jamadmin config asked for. None: leave that setting as it is."""

    daily_budget_usd: float | None = None
    daily_quota: int | None = None
    cooldown_seconds: float | None = None
    max_duration: int | None = None
    allowed_models: tuple[str, ...] | None = None
    block: tuple[str, ...] = ()
    unblock: tuple[str, ...] = ()
    reset: tuple[str, ...] = ()  # names from RESETTABLE, or "all"

    @property
    def is_empty(self) -> bool:
        return self == Change()


def apply_change(current: GuildSettings, change: Change, defaults: BotDefaults) -> GuildSettings:
    """The settings after `change` (resets first, then new values, then words).

    Raises SettingError, changing nothing, for a value past the bot's own limit.
    """
    _check_within_limits(change, defaults)
    updated = _reset(current, change.reset)
    values = {
        f.name: getattr(change, f.name)
        for f in fields(GuildSettings)
        if f.name != "blocked_words" and getattr(change, f.name) is not None
    }
    updated = replace(updated, **values)
    words = [w for w in updated.blocked_words if w not in change.unblock]
    words += [w for w in change.block if w not in words]
    if len(words) > MAX_BLOCKED_WORDS:
        raise SettingError(f"A server can block at most {MAX_BLOCKED_WORDS} words.")
    return replace(updated, blocked_words=tuple(words))


def _reset(current: GuildSettings, names: Iterable[str]) -> GuildSettings:
    chosen = set(names)
    if "all" in chosen:
        return GuildSettings()
    defaults = GuildSettings()
    cleared = {_RESET_FIELDS[n]: getattr(defaults, _RESET_FIELDS[n]) for n in chosen}
    return replace(current, **cleared)


def _check_within_limits(change: Change, defaults: BotDefaults) -> None:
    budget, ceiling = change.daily_budget_usd, defaults.daily_budget_usd
    if budget is not None and ceiling and (budget == 0 or budget > ceiling):
        raise SettingError(
            f"daily_budget can be at most ${ceiling:.2f} here: that is the bot owner's limit "
            "for a server."
        )
    quota, most = change.daily_quota, defaults.daily_quota
    if quota is not None and most and (quota == 0 or quota > most):
        raise SettingError(
            f"daily_quota can be at most {most} here: that is the bot owner's limit per member."
        )
    cooldown = change.cooldown_seconds
    if cooldown is not None and cooldown < defaults.cooldown_seconds:
        raise SettingError(
            f"cooldown must be at least {defaults.cooldown_seconds:g} seconds here: that is the "
            "bot owner's minimum."
        )
    longest = change.max_duration
    if longest is not None and longest > defaults.max_duration:
        raise SettingError(
            f"max_duration can be at most {defaults.max_duration} seconds here: that is the "
            "bot owner's limit."
        )


def parse_models(text: str) -> tuple[str, ...]:
    """A comma-separated subset of the four models, in the usual order."""
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    if not names or not names <= set(MODELS):
        raise SettingError(
            "models must be a comma-separated list of some of: " + ", ".join(MODELS) + "."
        )
    return tuple(model for model in MODELS if model in names)


def parse_words(text: str) -> tuple[str, ...]:
    """Comma-separated words or phrases, lower-cased, without duplicates."""
    words: list[str] = []
    for piece in text.split(","):
        word = " ".join(_plain(piece).split())
        if not word:
            continue
        if len(word) > MAX_WORD_LENGTH:
            raise SettingError(f"A blocked word can be at most {MAX_WORD_LENGTH} characters long.")
        if word not in words:
            words.append(word)
    return tuple(words)


def _plain(text: str) -> str:
    """Lower-case text without invisible format characters (zero-width spaces, joiners)."""
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()


def _word_pattern(word: str) -> re.Pattern[str]:
    phrase = r"\s+".join(re.escape(part) for part in word.split())
    return re.compile(rf"(?<!\w){phrase}(?!\w)")


class GuildSettingsStore(Protocol):
    """Where the settings live (``JobStore`` provides it)."""

    async def guild_settings(self, guild_id: int) -> GuildSettings | None: ...

    async def save_guild_settings(
        self, guild_id: int, settings: GuildSettings, *, by: int
    ) -> None: ...


class RuleBook:
    """Reads and changes servers' settings, and says which rules apply where."""

    def __init__(self, store: GuildSettingsStore, defaults: BotDefaults) -> None:
        self._store = store
        self.defaults = defaults
        self._lock = asyncio.Lock()  # two admins' changes: one read-modify-write at a time

    async def settings(self, guild_id: int) -> GuildSettings:
        return await self._store.guild_settings(guild_id) or GuildSettings()

    async def rules_for(self, guild_id: int | None) -> Rules:
        """The rules in a server; in a DM, the bot's defaults."""
        settings = await self._store.guild_settings(guild_id) if guild_id is not None else None
        return resolve(guild_id, settings, self.defaults)

    async def change(self, guild_id: int, change: Change, *, by: int) -> GuildSettings:
        """Apply and store `change`; raises SettingError (storing nothing) for a bad value."""
        async with self._lock:
            updated = apply_change(await self.settings(guild_id), change, self.defaults)
            await self._store.save_guild_settings(guild_id, updated, by=by)
        return updated
