"""How a build deals its pictures to the splits (seeded, reproducible).

- ``view``: each Pokemon's pictures are shuffled with a generator seeded by (seed, number) and dealt
  to test, valid, train; each Pokemon keeps at least one training picture. Test pictures are unseen
  pictures of seen Pokemon. A Pokemon's split does not change when other Pokemon are added.
- ``animation``: each Pokemon's animations (a view less its frame number: ``shiny_00`` ...
  ``shiny_23`` are the animation ``shiny``, the shiny front) are dealt whole, seeded by (seed,
  number), to test, valid, train; each Pokemon keeps at least one animation for training. Test
  pictures are views never seen for that Pokemon (no frame of them is in train), while every Pokemon
  is still trained on.
- ``pokemon``: whole Pokemon (those found in the input) are dealt to the splits (test Pokemon are
  never seen in training).
- ``auto``: ``view`` when most Pokemon found have two or more pictures, else ``pokemon``.
Split sizes are ``fraction * count`` rounded at random (seeded), so they are right on average.
With any captions, a caption group (its ``number``) stands for a Pokemon.
"""
import math
import random
import re
import statistics

SPLIT_BY = ("auto", "view", "animation", "pokemon")


def _deal_counts(count, valid_fraction, test_fraction, rng):
    """How many of ``count`` items go to valid and test (random rounding; one stays in train)."""

    def rounded(expected):
        whole = math.floor(expected)
        return whole + (1 if rng.random() < expected - whole else 0)

    n_valid, n_test = rounded(count * valid_fraction), rounded(count * test_fraction)
    while n_valid + n_test > count - 1 and (n_valid or n_test):
        if n_test >= n_valid and n_test:
            n_test -= 1
        else:
            n_valid -= 1
    return n_valid, n_test


def choose_split_by(pictures):
    per_pokemon = {}
    for picture in pictures:
        per_pokemon[picture.number] = per_pokemon.get(picture.number, 0) + 1
    return "view" if statistics.median(per_pokemon.values()) >= 2 else "pokemon"


def _dealt(position, n_valid, n_test):
    return "test" if position < n_test else "valid" if position < n_test + n_valid else "train"


def view_splits(pictures, valid_fraction, test_fraction, seed):
    """Splits for the pictures of one Pokemon (same order), dealt by view; see the module docstring."""
    rng = random.Random(f"{seed}:{pictures[0].number}")
    order = sorted(range(len(pictures)), key=lambda i: pictures[i].relative)
    rng.shuffle(order)
    n_valid, n_test = _deal_counts(len(order), valid_fraction, test_fraction, rng)
    splits = [None] * len(pictures)
    for position, index in enumerate(order):
        splits[index] = _dealt(position, n_valid, n_test)
    return splits


# A frame number at the end of a view: fetch-sprites names frames VIEW_00, VIEW_01, ...
_FRAME_NUMBER = re.compile(r"_\d+$")


def animation_of(view):
    """The animation a view belongs to: the view less its frame number (``back-shiny_03`` ->
    ``back-shiny``, ``sub/front_00`` -> ``sub/front``); a view without one is its own animation."""
    return _FRAME_NUMBER.sub("", view)


def animation_splits(pictures, valid_fraction, test_fraction, seed):
    """Splits for the pictures of one Pokemon (same order), whole animations dealt; see the module docstring."""
    rng = random.Random(f"{seed}:{pictures[0].number}:animation")
    animations = sorted({animation_of(picture.view) for picture in pictures})
    rng.shuffle(animations)
    n_valid, n_test = _deal_counts(len(animations), valid_fraction, test_fraction, rng)
    split_of = {animation: _dealt(position, n_valid, n_test) for position, animation in enumerate(animations)}
    return [split_of[animation_of(picture.view)] for picture in pictures]


def pokemon_splits(numbers, valid_fraction, test_fraction, seed):
    """``{number: split}``: whole Pokemon dealt to the splits."""
    rng = random.Random(seed)
    numbers = sorted(set(numbers))
    rng.shuffle(numbers)
    n_valid, n_test = _deal_counts(len(numbers), valid_fraction, test_fraction, rng)
    return {number: _dealt(position, n_valid, n_test) for position, number in enumerate(numbers)}


def dealer(split_by, pictures, valid_fraction, test_fraction, seed):
    """``(split_by, deal)``: the policy (``auto`` decided from ``pictures``) and ``deal(group)``, the
    splits of one Pokemon's pictures (same order). Splits depend only on file names (and, by view, on
    which of a Pokemon's pictures made it through), never on other Pokemon."""
    if split_by == "auto":
        split_by = choose_split_by(pictures)
    if split_by == "view":
        def deal(group):
            return view_splits(group, valid_fraction, test_fraction, seed)
    elif split_by == "animation":
        def deal(group):
            return animation_splits(group, valid_fraction, test_fraction, seed)
    else:
        split_of = pokemon_splits([picture.number for picture in pictures], valid_fraction, test_fraction, seed)

        def deal(group):
            return [split_of[group[0].number]] * len(group)
    return split_by, deal
