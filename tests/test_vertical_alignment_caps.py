"""A label party cannot enumerate a feature party's id space through the alignment.

Issue 17, finding 7 (its PSI part): the follower answered PSI requests of any
size and any number of alignments, so a label party could send every id it can
guess (all phone numbers of a prefix, say) and learn which the feature party
holds. The follower now caps a request at a multiple of its own table, and
the alignments it runs per session.
"""

from __future__ import annotations

import pytest

from fedwarden.core.errors import DataError
from fedwarden.secure.psi import PsiReceiver
from fedwarden.vertical.alignment import (
    MAX_ALIGNMENTS,
    PSI_REQUEST_FACTOR,
    AlignmentFollower,
)

HELD = [f"patient-{index}" for index in range(0, 200, 4)]
"""The feature party's 50 ids: one in four of the 200 an attacker might guess."""


def probe(follower: AlignmentFollower, guesses: list[str]) -> set[str]:
    """What a label party learns by asking ``follower`` to intersect with ``guesses``."""
    offer = follower.offer()
    receiver = PsiReceiver(guesses, "intersection")
    request = receiver.request()
    receiver.accept(offer)
    outcome = receiver.finish(follower.answer_intersection(request))
    assert outcome.intersection is not None
    return {str(identifier) for identifier in outcome.intersection}


def test_a_request_far_larger_than_the_followers_table_is_refused() -> None:
    follower = AlignmentFollower("clinic", HELD)
    guesses = [f"patient-{index}" for index in range(len(HELD) * PSI_REQUEST_FACTOR + 1)]
    with pytest.raises(DataError, match="enumerate"):
        probe(follower, guesses)


def test_a_request_within_the_cap_is_answered() -> None:
    follower = AlignmentFollower("clinic", HELD)
    guesses = [f"patient-{index}" for index in range(len(HELD) * PSI_REQUEST_FACTOR)]
    assert probe(follower, guesses) == {identifier for identifier in HELD if identifier in guesses}


def test_alignments_beyond_the_sessions_cap_are_refused() -> None:
    follower = AlignmentFollower("clinic", HELD)
    for start in range(MAX_ALIGNMENTS):
        window = [f"patient-{index}" for index in range(start * 100, start * 100 + 100)]
        probe(follower, window)
    with pytest.raises(DataError, match="alignments"):
        follower.offer()
