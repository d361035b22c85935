"""app/records/ids.py: prediction ids are unique within a process (threads included) and across
processes, and match the pattern the API validates."""

from __future__ import annotations

from app.records.ids import IdMint, format_id, is_prediction_id, prefix_of
from tests.app.records.racing import race


def test_ids_take_reserves_consecutive_blocks() -> None:
    mint = IdMint("0123456789abcdef")
    assert mint.take() == 0 and mint.take(10_000) == 1 and mint.take() == 10_001
    assert format_id(mint.prefix, 42) == "0123456789abcdef-000000002a"
    assert IdMint.ids(mint.prefix, 9, 3) == [format_id(mint.prefix, n) for n in (9, 10, 11)]


def test_ids_unique_across_threads_and_mints() -> None:
    mint = IdMint()
    taken: list[list[str]] = []

    def work() -> None:
        out: list[str] = []
        taken.append(out)
        for _ in range(500):
            out.append(format_id(mint.prefix, mint.take()))
            out.extend(IdMint.ids(mint.prefix, mint.take(7), 7))

    race(work, threads=8)  # the mint takes no lock
    every = [i for out in taken for i in out] + [format_id(IdMint().prefix, n) for n in range(4000)]
    assert len(every) == 8 * 500 * 8 + 4000 == len(set(every))
    assert len({IdMint().prefix for _ in range(1000)}) == 1000


def test_ids_pattern_accepts_ours_refuses_others() -> None:
    mint = IdMint()
    made = format_id(mint.prefix, mint.take())
    assert is_prediction_id(made) and prefix_of(made) == mint.prefix
    assert is_prediction_id(format_id(mint.prefix, 16**10))  # the counter grows a digit, still valid
    for bad in ("", "x", made.upper(), made + "\n", made[:-1], "0123456789abcdeg-0000000000", made + "0" * 7):
        assert not is_prediction_id(bad), bad
