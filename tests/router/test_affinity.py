"""Prefix hashing and the bounded affinity tables."""

from __future__ import annotations

from services.router.affinity import BoundedTable, PrefixAffinity, prefix_block_hashes


def test_equal_prefixes_hash_equal_blocks_and_a_difference_changes_every_later_block():
    system = "You are a terse assistant. " * 20  # 540 characters
    first = prefix_block_hashes("m", system + "What is 2 + 2? Please answer briefly and precisely.", 64, 100)
    second = prefix_block_hashes("m", system + "Name a prime number bigger than 100.", 64, 100)
    shared = len(system) // 64
    assert first[:shared] == second[:shared]
    assert first[shared] != second[shared]
    edited = prefix_block_hashes(
        "m", "X" + system[1:] + "What is 2 + 2? Please answer briefly and precisely.", 64, 100
    )
    assert not set(edited) & set(first), "a chained hash differs from the first differing block on"


def test_only_full_blocks_count_and_at_most_max_blocks():
    assert prefix_block_hashes("m", "a" * 63, 64, 10) == []
    assert len(prefix_block_hashes("m", "a" * 1000, 64, 10)) == 10
    assert len(prefix_block_hashes("m", b"\x00" * 256, 64, 10)) == 4, "token prompts hash their id bytes"


def test_models_do_not_share_prefixes():
    assert prefix_block_hashes("a", "x" * 64, 64, 1) != prefix_block_hashes("b", "x" * 64, 64, 1)


def test_the_longest_known_prefix_wins_among_usable_replicas():
    affinity = PrefixAffinity(capacity=100)
    turn_one = prefix_block_hashes("m", "system " * 40, 32, 100)
    turn_two = prefix_block_hashes("m", "system " * 40 + "more words " * 10, 32, 100)
    affinity.record(turn_one[:2], "r1")  # another conversation shared the first two blocks
    affinity.record(turn_one, "r2")
    affinity.record(turn_one[:2], "r1")
    assert affinity.longest_match(turn_two, {"r1", "r2"}) == ("r2", len(turn_one))
    assert affinity.longest_match(turn_two, {"r1"}) == ("r1", 2)
    assert affinity.longest_match(turn_two, {"r3"}) == (None, 0)


def test_tables_forget_the_least_recently_written_beyond_capacity():
    table: BoundedTable[str, str] = BoundedTable(2)
    table.put("a", "r1")
    table.put("b", "r2")
    table.put("a", "r1")  # refreshed
    table.put("c", "r3")
    assert (table.get("a"), table.get("b"), table.get("c")) == ("r1", None, "r3")
    table.discard_value("r3")
    assert table.get("c") is None and len(table) == 1
