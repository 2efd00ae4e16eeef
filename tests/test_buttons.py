"""How Extend grows a track, and the buttons' custom ids (pure: no Discord, no network)."""

from __future__ import annotations

import pytest

from bot.chat.buttons import BUTTONS, cancel_view, extension_plan, result_view


@pytest.mark.parametrize(
    ("total", "clip", "cap", "plan"),
    [
        (8.0, 8.0, 30, (8.0, 8)),  # short: the whole track continues, and doubles
        (3.5, 3.0, 30, (3.0, 4)),  # a fraction: the clip is whole seconds
        (20.0, 15.0, 30, (15.0, 15)),  # past half the cap: the last half continues
        (95.0, 15.0, 30, (15.0, 15)),  # a long jam keeps growing by half the cap
        (2.0, 1.0, 2, (1.0, 1)),
    ],
)
def test_extension_plan(total: float, clip: float, cap: int, plan: tuple[float, int]) -> None:
    context, added = extension_plan(total, clip, cap)
    assert (context, added) == plan
    assert round(context) + added <= cap  # the request always fits MAX_DURATION_SECONDS


def test_custom_ids_carry_the_job_and_fit_discords_limit() -> None:
    job_id = 2**63 - 1
    ids = [
        item.custom_id
        for view in (cancel_view(job_id), result_view(job_id))
        for item in view.children
    ]  # type: ignore[attr-defined]
    assert ids == [
        f"jam:cancel:{job_id}",
        f"jam:regenerate:{job_id}",
        f"jam:variation:{job_id}",
        f"jam:extend:{job_id}",
    ]
    assert all(len(i) <= 100 for i in ids)
    for button, custom_id in zip(BUTTONS, ids, strict=True):
        assert button(job_id).template.fullmatch(custom_id)  # what a click is matched with
