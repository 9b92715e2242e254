"""The README's tables of settings agree with the records in `sidecar.setting_records`.

Each row of a table headed `| variable | flag | default | allowed |` (the Settings section's,
and the active checks' before it) must name a setting's variable, its flag and its default as
`serve --help` shows it (docs/protocol.md section 2 lists the settings); every setting must
have exactly one such row. The `allowed` column is the README's own prose and is not compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.setting_kinds import Option
from sidecar.settings import OPTIONS

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| variable | flag | default | allowed |"


def settings_rows() -> list[tuple[str, str, str]]:
    """The variable, flag and default cells of each row of the README's settings tables."""
    rows: list[tuple[str, str, str]] = []
    inside = False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line == HEADER:
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            # The first three cells hold no `|`; the `allowed` one may.
            variable, flag, default = (cell.strip() for cell in line.split("|")[1:4])
            rows.append((variable, flag, default))
        elif not line.startswith("|"):
            inside = False
    return rows


def expected_row(option: Option[object]) -> tuple[str, str, str]:
    """The row the record makes: a default a user could type in backticks, words as they are."""
    flag = f"`{option.flag}`" if option.flag else ""
    default = f"`{option.default_text}`" if option.literal else option.default_text
    return (f"`{option.variable}`", flag, default)


ROWS = settings_rows()


def test_readme_has_settings_tables() -> None:
    # A changed header would otherwise leave nothing to compare, and every test passing.
    assert len(ROWS) >= len(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.variable)
def test_readme_row_of_each_setting_has_its_flag_and_default(option: Option[object]) -> None:
    expected = expected_row(option)
    found = [row for row in ROWS if row[0] == expected[0]]
    row = "| " + " | ".join(expected) + " | ... |"
    assert found == [expected], f"README.md should have exactly one row {row}"


def test_readme_rows_name_only_settings_that_exist() -> None:
    variables = {f"`{option.variable}`" for option in OPTIONS}
    assert [row for row in ROWS if row[0] not in variables] == []
