import pytest

from runtime.patterns import Pattern, all_patterns, key


def test_key_is_sorted_and_canonical():
    assert Pattern({"image", "audio"}).key == "audio+image"
    assert str(Pattern(["image"])) == "image"
    assert key(["text", "image", "audio"]) == "audio+image+text"


def test_from_key_round_trip_and_rejects_non_canonical():
    for p in all_patterns(["a", "b", "c"]):
        assert Pattern.from_key(p.key) == p
    with pytest.raises(ValueError, match="not canonical"):
        Pattern.from_key("image+audio")
    with pytest.raises(ValueError, match="malformed"):
        Pattern.from_key("audio++image")


@pytest.mark.parametrize("m,count", [(1, 1), (2, 3), (3, 7), (4, 15)])
def test_all_patterns_counts_are_nonempty_subsets(m, count):
    names = [f"m{i}" for i in range(m)]
    patterns = all_patterns(names)
    assert len(patterns) == count == len(set(patterns))
    assert all(len(p) >= 1 for p in patterns)
    assert patterns[0] == Pattern(names)  # fullest first


def test_pattern_is_a_frozenset_and_hashable():
    p = Pattern(["image", "audio"])
    assert p == frozenset({"audio", "image"})
    assert {p: 1}[Pattern(["audio", "image"])] == 1


@pytest.mark.parametrize("bad", [[], [""], ["a+b"], [3]])
def test_invalid_patterns_raise(bad):
    with pytest.raises(ValueError):
        Pattern(bad)


def test_of_present_ignores_none():
    assert Pattern.of_present({"image": 1, "audio": None}).key == "image"
    with pytest.raises(ValueError, match="at least one"):
        Pattern.of_present({"image": None})
