import json
import random

import pytest

from onefit.space import ArchError, Dimension, Space


@pytest.fixture
def space():
    return Space([Dimension("width:a", "width", (4, 8, 16)), Dimension("depth:s", "depth", (1, 2, 3)),
                  Dimension("width:b", "width", (2, 4))])


def test_extremes_size_and_sampling(space):
    assert space.max() == {"width:a": 16, "depth:s": 3, "width:b": 4}
    assert space.min() == {"width:a": 4, "depth:s": 1, "width:b": 2}
    assert space.size == 18
    archs = [space.sample(random.Random(i)) for i in range(50)]
    assert all(space.validate(a) == a for a in archs)
    assert len({space.key(a) for a in archs}) > 5
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))


def test_validation_names_the_dimension_and_allowed_values(space):
    with pytest.raises(ArchError, match=r"'width:a'.*allowed values are \[4, 8, 16\]"):
        space.validate({**space.max(), "width:a": 5})
    with pytest.raises(ArchError, match=r"unknown dimension\(s\) \['width:z'\]"):
        space.validate({**space.max(), "width:z": 1})
    with pytest.raises(ArchError, match="missing"):
        space.validate({"width:a": 4})
    with pytest.raises(ArchError, match="dict"):
        space.validate([1, 2])


def test_bad_dimensions_are_refused():
    with pytest.raises(ValueError, match="increasing"):
        Dimension("w", "width", (8, 4))
    with pytest.raises(ValueError, match="kind"):
        Dimension("w", "size", (1,))
    with pytest.raises(ValueError, match="duplicated"):
        Space([Dimension("w", "width", (1,)), Dimension("w", "width", (2,))])


def test_json_round_trip_and_canonical_key(space):
    assert Space.from_json(json.loads(json.dumps(space.to_json()))) == space
    arch = {"width:b": 2, "width:a": 8, "depth:s": 1}
    assert space.key(arch) == space.key(dict(reversed(list(arch.items()))))


def test_nested_chain_grows_one_choice_at_a_time(space):
    chain = space.nested_chain()
    assert chain[0] == space.min() and chain[-1] == space.max()
    assert len(chain) == 1 + sum(len(d.choices) - 1 for d in space)
    for small, big in zip(chain, chain[1:]):
        grown = [k for k in small if small[k] != big[k]]
        assert len(grown) == 1 and big[grown[0]] > small[grown[0]]


def test_values_of_the_wrong_type_are_refused_even_when_equal(space):
    import numpy as np

    name = space.names[0]
    allowed = space[name].choices
    for wrong in (float(allowed[-1]), str(allowed[-1])):
        with pytest.raises(ArchError, match=rf"{name!r}.*value {wrong!r}.* is not allowed; allowed values are"):
            space.complete({name: wrong})
    with pytest.raises(ArchError, match=r"\(float, not int\)"):
        space.complete({name: float(allowed[-1])})
    arch = space.complete({name: np.int64(allowed[0])})  # an integer of another type is that integer
    assert arch[name] == allowed[0] and type(arch[name]) is int
    bools = Space([Dimension("flag", "width", (0, 1))])
    with pytest.raises(ArchError, match="bool"):
        bools.validate({"flag": True})
