"""`jambot check`, run as a real child process against both fakes; and what a newcomer reads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo

from bot.jobs.migrate import load_migrations
from bot.jobs.store import JobStore
from bot.settings import Settings
from tests.fakes.discord import FakeDiscord
from tests.fakes.replicate import FakeReplicate
from tests.harness import REPO_ROOT
from tests.test_cli import closed_port_url, jambot

# Discord's permission bits (developer docs, "Permissions"): the invite must ask for these five.
VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY = (
    1 << 10,
    1 << 11,
    1 << 14,
    1 << 15,
    1 << 16,
)
PERMISSIONS = VIEW_CHANNEL | SEND_MESSAGES | EMBED_LINKS | ATTACH_FILES | READ_MESSAGE_HISTORY


@pytest.fixture
async def discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake
        assert fake.violations == [], fake.violations


def check_env(discord: FakeDiscord, replicate: FakeReplicate, **extra: str) -> dict[str, str]:
    return {
        "DISCORD_TOKEN": discord.bot_token,
        "DISCORD_API_BASE_URL": discord.api_base_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
        "REPLICATE_API_TOKEN": replicate.token,
        "REPLICATE_BASE_URL": replicate.base_url,
        "REPLICATE_MODEL": f"{replicate.model}:{replicate.version}",
        **extra,
    }


def failures(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("✗ ")]


def assert_secrets_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def test_check_passes_with_good_tokens_and_creates_nothing(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(discord, replicate_fake)
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 0, out + err
    assert failures(out) == []
    schema = load_migrations()[-1].version
    assert [line for line in out.splitlines() if line.startswith("✓ ")] == [
        "✓ Settings parse (read from the environment)",
        f"✓ Discord accepted DISCORD_TOKEN: bot jambot#4821 of application jambot "
        f"(id {discord.application_id})",
        "✓ Discord's gateway answers at DISCORD_GATEWAY_URL",
        "✓ Replicate accepted REPLICATE_API_TOKEN: account jam-tester (user)",
        "✓ REPLICATE_MODEL exists: meta/musicgen, version 671ac645ce5e…, created 2023-11-16",
        f"✓ The job database jambot.db opens and is migrated (schema version {schema})",
    ]
    invite = (
        f"https://discord.com/oauth2/authorize?client_id={discord.application_id}"
        f"&scope=bot+applications.commands&permissions={PERMISSIONS}"
    )
    assert f"  {invite}\n" in out
    assert PERMISSIONS == 117760
    assert replicate_fake.creates == []
    assert [r.route for r in replicate_fake.requests] == ["account", "version"]
    assert {(c.method, c.path) for c in discord.calls} == {
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    }
    assert_secrets_hidden(out + err, discord.bot_token, replicate_fake.token)


async def test_a_model_without_a_version_is_checked_by_its_latest_version(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(discord, replicate_fake, REPLICATE_MODEL=replicate_fake.model)
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 0, out + err
    assert "✓ REPLICATE_MODEL exists: meta/musicgen, latest version 671ac645ce5e…" in out
    assert [r.route for r in replicate_fake.requests] == ["account", "model"]


async def test_a_rejected_discord_token_names_it(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(discord, replicate_fake, DISCORD_TOKEN="wrong-token")
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    assert failures(out) == [
        "✗ Discord rejected DISCORD_TOKEN (401 Unauthorized): fix DISCORD_TOKEN in .env."
    ]
    assert "oauth2/authorize" not in out  # no application id, so no invite URL
    assert_secrets_hidden(out + err, "wrong-token")


async def test_a_rejected_replicate_token_names_it_and_costs_nothing(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(discord, replicate_fake, REPLICATE_API_TOKEN="r8_wrong")
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    assert failures(out) == [
        "✗ Replicate rejected REPLICATE_API_TOKEN (401 Unauthenticated): fix "
        "REPLICATE_API_TOKEN in .env."
    ]
    assert replicate_fake.creates == []
    assert [(r.route, r.status) for r in replicate_fake.requests] == [("account", 401)]
    assert_secrets_hidden(out + err, "r8_wrong")


async def test_an_unknown_model_version_names_replicate_model(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    unknown = f"{replicate_fake.model}:{'0' * 64}"
    env = check_env(discord, replicate_fake, REPLICATE_MODEL=unknown)
    code, out, _ = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    assert failures(out) == [
        f"✗ Replicate has no version {unknown} (404 Not Found): fix REPLICATE_MODEL in .env."
    ]
    assert replicate_fake.creates == []


async def test_an_unreachable_discord_names_discord_api_base_url(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(
        discord, replicate_fake, DISCORD_API_BASE_URL=closed_port_url("http", "/api/v10")
    )
    code, out, _ = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    assert failures(out) == [
        "✗ Couldn't reach Discord's REST API at DISCORD_API_BASE_URL (the connection was "
        "refused): check the network connection and that setting."
    ]


async def test_an_unreachable_replicate_names_replicate_base_url(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    env = check_env(discord, replicate_fake, REPLICATE_BASE_URL=closed_port_url("http"))
    code, out, _ = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    [line] = failures(out)
    assert line.startswith("✗ Couldn't reach Replicate at REPLICATE_BASE_URL (")


async def test_a_database_held_by_a_running_bot_still_passes(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    database = tmp_path / "data" / "jambot.db"
    env = check_env(discord, replicate_fake, DATABASE_URL=f"sqlite:///{database}")
    async with await JobStore.open(database, exclusive=True):  # what `jambot run` holds
        code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 0, out + err
    assert f"✓ The job database {database} opens and is migrated" in out


async def test_an_unusable_database_names_database_url(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    (tmp_path / "folder.db").mkdir()
    env = check_env(discord, replicate_fake, DATABASE_URL="sqlite:///folder.db")
    code, out, _ = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    [line] = failures(out)
    assert line.startswith("✗ The job database at DATABASE_URL can't be used (")
    assert line.endswith("): fix DATABASE_URL in .env.")


async def test_a_postgresql_store_is_checked_and_its_password_never_shown(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path, pg_url: str
) -> None:
    user, _, host = pg_url.partition("://")[2].partition("@")
    with_password = f"postgresql://{user}:s3cret-pw@{host}"  # the cluster trusts loopback
    env = check_env(discord, replicate_fake, DATABASE_URL=with_password)
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 0, out + err
    schema = load_migrations()[-1].version
    shown = f"postgresql://{user}:***@{host}"
    assert f"✓ The job database {shown} opens and is migrated (schema version {schema})" in out
    assert_secrets_hidden(out + err, "s3cret-pw")


async def test_an_unreachable_postgresql_names_database_url(
    discord: FakeDiscord, replicate_fake: FakeReplicate, tmp_path: Path
) -> None:
    port = closed_port_url("postgresql").rsplit(":", 1)[1]
    url = f"postgresql://jam:s3cret-pw@127.0.0.1:{port}/jambot"
    env = check_env(discord, replicate_fake, DATABASE_URL=url)
    code, out, err = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    [line] = failures(out)
    assert line.startswith("✗ The job database at DATABASE_URL can't be used (")
    assert "can't be reached" in line and "jam:***@127.0.0.1" in line
    assert_secrets_hidden(out + err, "s3cret-pw")


async def test_settings_that_do_not_parse_are_the_one_line(tmp_path: Path) -> None:
    code, out, _ = await jambot("check", cwd=tmp_path, env={"MAX_ATTEMPTS": "0"})
    assert code == 2
    assert out == ("✗ MAX_ATTEMPTS must be a whole number between 1 and 10: see .env.example.\n")


# A newcomer who copied .env.example and has not pasted the tokens yet ---------------------


def copied_example(folder: Path, **values: str) -> None:
    """`cp .env.example .env`, then `values` filled in, as a newcomer does."""
    text = (REPO_ROOT / ".env.example").read_text()
    for name, value in values.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
    (folder / ".env").write_text(text)


async def test_a_copied_but_unfilled_env_says_to_paste_the_tokens(tmp_path: Path) -> None:
    copied_example(tmp_path)
    code, _, err = await jambot("run", cwd=tmp_path, env={})
    assert code == 2
    assert err == (
        "jambot: .env exists but DISCORD_TOKEN is still empty: paste your bot token there "
        "(see .env.example).\n"
    )


async def test_check_names_both_empty_tokens_of_a_copied_env(
    discord: FakeDiscord, tmp_path: Path
) -> None:
    copied_example(tmp_path, DISCORD_API_BASE_URL=discord.api_base_url)
    env = {"DISCORD_GATEWAY_URL": discord.gateway_url}
    code, out, _ = await jambot("check", cwd=tmp_path, env=env)
    assert code == 1
    assert "✓ Settings parse (read from the environment and .env)" in out
    assert failures(out) == [
        "✗ .env exists but DISCORD_TOKEN is still empty: paste your bot token there "
        "(see .env.example).",
        "✗ .env exists but REPLICATE_API_TOKEN is still empty: paste your Replicate API token "
        "there (see .env.example).",
    ]
    assert discord.calls == []


@pytest.mark.parametrize(
    ("values", "env", "sentence"),
    [
        (
            {"REPLICATE_API_TOKEN": "your-token-here"},
            {},
            "jambot: .env exists but REPLICATE_API_TOKEN is still a placeholder: paste your "
            "Replicate API token there (see .env.example).",
        ),
        (
            {"REPLICATE_API_TOKEN": "r8_x"},
            {"REPLICATE_API_TOKEN": ""},
            "jambot: REPLICATE_API_TOKEN is empty in the environment, which wins over .env: set "
            "it to your Replicate API token.",
        ),
    ],
)
async def test_where_an_unusable_token_came_from_is_said(
    tmp_path: Path, values: dict[str, str], env: dict[str, str], sentence: str
) -> None:
    copied_example(tmp_path, **values)
    code, _, err = await jambot("generate", "x", cwd=tmp_path, env=env)
    assert code == 2
    assert err == sentence + "\n"


async def test_an_env_without_the_line_says_to_add_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LOG_LEVEL=INFO\n")
    code, _, err = await jambot("sync", cwd=tmp_path, env={})
    assert code == 2
    assert err == (
        "jambot: .env exists but has no DISCORD_TOKEN line: add DISCORD_TOKEN= with your bot "
        "token (see .env.example).\n"
    )


# What the README and .env.example say matches the code -------------------------------------

NUMBER = r"\d[\d,]*(?:\.\d+)?(?:\s?(?:B|GiB))?"
RANGE = re.compile(rf"(?P<low>{NUMBER})\s?(?:\.\.|\u2013)\s?(?P<high>{NUMBER})")
AT_MOST = re.compile(rf"at most (?P<high>{NUMBER})")
ABOVE = re.compile(rf"above (?P<low>{NUMBER})")


def number(text: str) -> float:
    value, _, unit = text.replace(",", "").partition(" ")
    unit = unit or ("GiB" if value.endswith("GiB") else "")
    scale = 1024**3 if unit == "GiB" else 1
    return float(value.removesuffix("GiB").removesuffix("B")) * scale


Bound = tuple[float, bool]  # a number, and whether the bound itself is excluded ("above 0")


def bounds(info: FieldInfo) -> tuple[Bound | None, Bound | None]:
    low: Bound | None = None
    high: Bound | None = None
    for meta in info.metadata:
        if getattr(meta, "ge", None) is not None:
            low = (meta.ge, False)
        if getattr(meta, "gt", None) is not None:
            low = (meta.gt, True)
        if getattr(meta, "le", None) is not None:
            high = (meta.le, False)
    return low, high


def stated(text: str) -> list[tuple[Bound | None, Bound | None]]:
    found: list[tuple[Bound | None, Bound | None]] = [
        ((number(m["low"]), False), (number(m["high"]), False)) for m in RANGE.finditer(text)
    ]
    found += [(None, (number(m["high"]), False)) for m in AT_MOST.finditer(text)]
    found += [((number(m["low"]), True), None) for m in ABOVE.finditer(text)]
    return found


def example_comments() -> dict[str, str]:
    """Each setting in .env.example and the comment block just above it."""
    comments: dict[str, str] = {}
    block: list[str] = []
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.startswith("# ---"):
            block = []
        elif line.startswith("#"):
            block.append(line.lstrip("# "))
        elif "=" in line:
            comments[line.partition("=")[0]] = " ".join(block)
            block = []
    return comments


def readme_statements() -> dict[str, str]:
    """The meaning column of the settings table and the "Ranges:" paragraph, per setting."""
    readme = (REPO_ROOT / "README.md").read_text()
    found: dict[str, str] = {}
    for row in re.finditer(r"^\| `([A-Z_]+)` \|.*\| (.*) \|$", readme, re.MULTILINE):
        found[row[1]] = row[2]
    paragraph = readme[readme.index("Ranges: ") :].split("\n\n")[0]
    for part in paragraph.replace("\n", " ").split(";"):
        if name := re.search(r"`([A-Z_]+)`", part):
            found[name[1]] = found.get(name[1], "") + " " + part
    return found


@pytest.mark.parametrize("where", [".env.example", "README.md"])
def test_every_stated_range_matches_the_field_bounds(where: str) -> None:
    texts = example_comments() if where == ".env.example" else readme_statements()
    numeric = {n: f for n, f in Settings.model_fields.items() if f.annotation in (int, float)}
    checked = 0
    for name, info in numeric.items():
        low, high = bounds(info)
        for said_low, said_high in stated(texts.get(name.upper(), "")):
            assert said_low in (None, low), f"{where}: {name.upper()} says {said_low}, not {low}"
            assert said_high in (None, high), (
                f"{where}: {name.upper()} says {said_high}, not {high}"
            )
            checked += 1
    assert checked >= 10, f"{where}: only {checked} ranges found; is the parser still right?"


def test_the_readme_runs_jambot_from_the_virtual_environment() -> None:
    """On a fresh clone `jambot` isn't on PATH: every command to type says `.venv/bin/jambot`.

    Commands to type are the lines of the code blocks and the inline spans with arguments;
    prose naming a command (`jambot run` holds a lock) is left alone.
    """
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)
    spans = re.findall(r"`([^`\n]*jambot (?:run|sync|check|generate) [-\"][^`\n]*)`", readme)
    typed = [line for block in blocks for line in block.splitlines()] + spans
    uses = [
        line
        for line in typed
        for m in re.finditer(r"(\S*)jambot (?:run|sync|check|generate)\b", line)
        if not m[1].endswith(".venv/bin/")
    ]
    assert uses == []
    assert sum(".venv/bin/jambot" in line for line in typed) >= 8
