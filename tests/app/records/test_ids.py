"""app/records/ids.py: prediction ids are unique within a process (threads included) and across
processes, and match the pattern the API validates."""

from __future__ import annotations

import sys
import threading

from app.records.ids import IdMint, format_id, is_prediction_id, prefix_of


def test_ids_take_reserves_consecutive_blocks() -> None:
    mint = IdMint("0123456789abcdef")
    assert mint.take() == 0 and mint.take(10_000) == 1 and mint.take() == 10_001
    assert format_id(mint.prefix, 42) == "0123456789abcdef-000000002a"
    assert IdMint.ids(mint.prefix, 9, 3) == [format_id(mint.prefix, n) for n in (9, 10, 11)]


def test_ids_unique_across_threads_and_mints() -> None:
    mint = IdMint()
    taken: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        for _ in range(500):
            out.append(format_id(mint.prefix, mint.take()))
            out.extend(IdMint.ids(mint.prefix, mint.take(7), 7))

    threads = [threading.Thread(target=work, args=(out,)) for out in taken]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the mint takes no lock: let the threads switch as often as they can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
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
