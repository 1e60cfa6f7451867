"""The CLI's tables: the plain layout (no rich import) is exactly rich's, whenever it lays a table out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetop.cli.output import plain_table, render_table, rich_table

# cells as the CLI's tables hold them: names, states, times, counts, messages, and what rich treats
# specially (markup, emoji codes, wide characters, blanks, tabs, line breaks)
PIECES = st.sampled_from(
    ["web-1", "Invalid: $.bogus: unknown field", "2026-01-01T00:00:00Z", "a.example/→web-1", "x3", "-",
     "[bold]", "[x]", ":smile:", ":100:", ":+1:", ":00:", "全", "…", " ", "  ", "\t", "\n", "a b", "é",
     "Unknown(FleetUnreachable)", "8000-8002", "\\", "$.routes[0].host", ""]
)  # fmt: skip
PLAIN = st.sampled_from(
    ["web-1", "Invalid: $.bogus: unknown field", "2026-01-01T00:00:00Z", "a.example/→web-1", "x3", "-",
     "…", "a b", "\n", "", ":00:", "8000-8002", "\\"]
)  # fmt: skip
CELLS = st.one_of(st.lists(PIECES, max_size=4), st.lists(PLAIN, max_size=4)).map("".join)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 5).flatmap(
        lambda n: st.tuples(
            st.lists(CELLS, min_size=n, max_size=n),
            st.lists(st.lists(CELLS, min_size=n, max_size=n), max_size=4),
            st.sampled_from([200, 60, 40, 12, 5]),
        )
    )
)
def test_the_plain_layout_is_riches_whenever_it_answers(
    table: tuple[list[str], list[list[str]], int],
) -> None:
    columns, rows, width = table
    riches = rich_table(columns, rows, width=width)
    plain = plain_table(columns, rows, width=width)
    if plain is not None:
        assert plain == riches
    assert render_table(columns, rows, width=width) == riches


def test_the_tables_the_cli_prints_are_laid_out_plainly() -> None:
    rows = [
        ["web-1", "2", "2/2", "Available"],
        ["bad", "-", "-", "Invalid: $.replicas: Input should be a valid integer"],
        ["front", "nginx", "a.example/→web-1", "2026-01-01T00:00:00Z"],
        ["multi", "", "one (active/running)\ntwo (failed/failed)", "x3"],
    ]
    columns = ["NAME", "", "ROUTES", "STATUS"]
    assert plain_table(columns, rows) == rich_table(columns, rows)
    assert plain_table(["A"], [["[bold]x"]]) is None  # rich's markup: rich lays it out
    assert plain_table(["A"], [["x" * 201]]) is None  # wider than the screen: rich folds it


def test_the_emoji_names_of_digits_alone_are_known() -> None:
    """A cell with ``:<digits>:`` (a time) is laid out plainly unless rich knows the name as an emoji."""
    from rich._emoji_codes import EMOJI

    from fleetop.cli.output import _DIGIT_EMOJI

    assert {name for name in EMOJI if name.isdigit()} == _DIGIT_EMOJI
