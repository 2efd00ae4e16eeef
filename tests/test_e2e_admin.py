"""The owner's control through the real bot: daily budgets, /jamadmin config and stats, blocked
words, and the cost on the track card."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.fakes.discord_models import FakeInteraction
from tests.fakes.discord_payloads import MEMBER_PERMISSIONS
from tests.harness import Harness, harness, to_options, wait_for

ADMIN = str(int(MEMBER_PERMISSIONS) | 1 << 5)  # a member with Manage Server
ADMIN_ID = 900


async def jamadmin(
    h: Harness, subcommand: str, permissions: str = ADMIN, user_id: int = ADMIN_ID, **options: Any
) -> str:
    """Send /jamadmin <subcommand> and return its private answer."""
    interaction = await h.discord.send_interaction(
        "jamadmin",
        to_options(options),
        subcommand=subcommand,
        user_id=user_id,
        permissions=permissions,
    )
    callback = await h.discord.wait_for_call(
        lambda c: c.path.startswith(f"/interactions/{interaction.id}/")
    )
    assert callback.json["data"]["flags"] & 64, "the answer is private"
    reply = await h.discord.wait_for_call(
        lambda c: c.method == "POST" and c.path.endswith(interaction.token)
    )
    return str(reply.json["content"])


async def private_refusal(h: Harness, interaction: FakeInteraction) -> str:
    followup = await h.discord.wait_for_call(
        lambda c: c.method == "POST" and c.path.endswith(interaction.token)
    )
    assert followup.json["flags"] & 64, "a refusal is private"
    assert any(c.method == "DELETE" for c in h.discord.calls_for(interaction))
    return str(followup.json["content"])


async def jobs_of(h: Harness, user_id: int) -> int:
    return len(await h.bot.services.store.recent_for_user(user_id))


async def test_past_the_servers_budget_nothing_is_made(tmp_path: Path) -> None:
    # the first track's estimate (1 GPU s per audio s at $0.01) is $0.01: it doesn't fit
    async with harness(tmp_path, guild_daily_budget_usd=0.005, replicate_cost_per_second=0.01) as h:
        text = await private_refusal(h, await h.music(prompt="too dear", duration=1, user_id=1))
        assert text.startswith("⏱️ This server's budget for today is nearly used up")
        assert "resets at 00:00 UTC (in " in text
        assert h.replicate.creates == [] and await jobs_of(h, 1) == 0


async def test_past_the_bots_budget_nothing_is_made(tmp_path: Path) -> None:
    async with harness(tmp_path, daily_budget_usd=0.015, replicate_cost_per_second=0.01) as h:
        h.replicate.run_seconds = 1.0
        first = await h.music(prompt="fits", duration=1, user_id=1)
        await h.job_for(first, terminal=False)
        text = await private_refusal(h, await h.music(prompt="doesn't", duration=1, user_id=2))
        assert text.startswith("⏱️ The bot's budget for today is nearly used up")
        await h.final_reply(first)
        assert len(h.replicate.creates) == 1 and await jobs_of(h, 2) == 0


async def test_jamadmin_needs_manage_server(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        for subcommand, options in (("config", {"max_duration": 2}), ("stats", {})):
            text = await jamadmin(h, subcommand, permissions=MEMBER_PERMISSIONS, **options)
            assert text.startswith("Only members who can manage this server")
        assert await h.bot.services.store.guild_settings(h.discord.guild_id) is None


async def test_jamadmin_config_changes_what_music_accepts(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        shown = await jamadmin(h, "config")
        assert "Longest track: 30 s (bot default)" in shown

        shown = await jamadmin(h, "config", max_duration=2, models="stereo-large, large")
        assert "Longest track: 2 s (set here)" in shown
        assert "Models: stereo-large, large (set here)" in shown
        too_long = await h.music(prompt="long", duration=5, user_id=1)
        final = await h.final_reply(too_long)
        assert final.json["content"] == "⚠️ duration must be between 1 and 2 seconds."
        melody = await h.music(prompt="tune", duration=1, model="melody-large", user_id=1)
        text = await private_refusal(h, melody)
        assert text == "🚫 This server doesn't use melody-large; it allows: stereo-large, large."

        await jamadmin(h, "config", daily_budget=0.0001)
        text = await private_refusal(h, await h.music(prompt="short", duration=1, user_id=1))
        assert "This server's budget for today" in text
        assert h.replicate.creates == [] and await jobs_of(h, 1) == 0

        shown = await jamadmin(h, "config", reset="all")
        assert "Daily budget: no cap (bot default)" in shown
        await h.final_reply(await h.music(prompt="now it fits", duration=5, user_id=1))
        assert len(h.replicate.creates) == 1


async def test_a_setting_past_the_bots_limit_is_refused(tmp_path: Path) -> None:
    async with harness(tmp_path, guild_daily_budget_usd=1.0) as h:
        text = await jamadmin(h, "config", daily_budget=5.0)
        assert text == (
            "⚠️ daily_budget can be at most $1.00 here: that is the bot owner's limit for a server."
        )
        assert await h.bot.services.store.guild_settings(h.discord.guild_id) is None


async def test_a_blocked_word_is_refused_without_repeating_it(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        shown = await jamadmin(h, "config", block="Kazoo, polka")
        assert "||kazoo||" in shown and "||polka||" in shown
        refused = await h.music(prompt="a wild KAZOO solo", duration=1, user_id=1)
        text = await private_refusal(h, refused)
        assert text == "🚫 That prompt uses a word this server has blocked."
        assert all("kazoo" not in str(c.json).lower() for c in h.discord.calls_for(refused))
        assert h.replicate.creates == [] and await jobs_of(h, 1) == 0

        await jamadmin(h, "config", unblock="kazoo")
        await h.final_reply(await h.music(prompt="a wild kazoo solo", duration=1, user_id=1))
        assert len(h.replicate.creates) == 1


async def test_buttons_follow_the_servers_rules(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        made = await h.final_reply(await h.music(prompt="rain on tin", duration=1, user_id=1))
        await wait_for(lambda: _delivered(h, 1))
        await jamadmin(h, "config", block="rain")
        click = await h.discord.send_component(
            f"jam:regenerate:{(await h.bot.services.store.recent_for_user(1))[0].id}",
            message_id=int(made.response["id"]),
            user_id=2,
        )
        text = await private_refusal(h, click)
        assert text == "🚫 That prompt uses a word this server has blocked."
        assert len(h.replicate.creates) == 1 and await jobs_of(h, 2) == 0


async def test_the_card_shows_the_cost_and_a_nearly_spent_budget(tmp_path: Path) -> None:
    # estimate: 1 GPU s per audio s x $0.80 = $0.80, within $1.00; the track takes ~1.2 GPU s
    async with harness(tmp_path, replicate_cost_per_second=0.8) as h:
        await jamadmin(h, "config", daily_budget=1.0)
        h.replicate.run_seconds = 1.2
        final = await h.final_reply(await h.music(prompt="pricey", duration=1, user_id=1))
        embed = final.json["embeds"][0]
        fields = {f["name"]: f["value"] for f in embed["fields"]}
        assert re.fullmatch(r"~\$0\.9\d{3}", fields["Cost"]), fields
        assert re.search(
            r"This server has used 9\d% of today's \$1\.00 budget\.", embed["description"]
        )
        job = (await h.bot.services.store.recent_for_user(1))[0]
        assert job.expected_cost is not None and abs(job.expected_cost - 0.8) < 1e-9


async def test_the_card_has_no_budget_line_while_there_is_room(tmp_path: Path) -> None:
    async with harness(tmp_path, guild_daily_budget_usd=100.0) as h:
        final = await h.final_reply(await h.music(prompt="cheap", duration=1, user_id=1))
        embed = final.json["embeds"][0]
        assert "Cost" in {f["name"] for f in embed["fields"]}
        assert "budget" not in str(embed.get("description"))


async def test_jamadmin_stats_counts_tracks_and_members(tmp_path: Path) -> None:
    async with harness(tmp_path, guild_daily_budget_usd=10.0) as h:
        for user_id, prompt in ((1, "one"), (2, "two"), (2, "three")):
            await h.final_reply(await h.music(prompt=prompt, duration=1, user_id=user_id))
        await wait_for(lambda: _delivered(h, 2, count=2))
        text = await jamadmin(h, "stats")
        assert "Today: 3 tracks, 0 failures, $" in text
        assert "Last 30 days: 3 tracks, 0 failures" in text
        assert "Median time from command to track: " in text
        assert "Most active (30 days): <@2> 2, <@1> 1" in text
        assert "Today's budget: $0.00 of $10.00 (0%)" in text
        reply = [c for c in h.discord.calls if c.method == "POST" and "Most active" in str(c.json)]
        assert reply[0].json["allowed_mentions"]["parse"] == []  # mentions ping nobody


async def _delivered(h: Harness, user_id: int, count: int = 1) -> bool:
    jobs = await h.bot.services.store.recent_for_user(user_id)
    return sum(job.status == "delivered" for job in jobs) >= count
