"""``--views``, every door's choice of what the model is shown of each picture (light: read when the
command line is parsed, before PIL or torch load).

"one": the picture as it is. "turns": also turned 15 degrees either way, and each of the three at 85% of
its size on white; their zero-shot probabilities averaged, the picture as it is counted PLAIN_VIEW_WEIGHT
times, and rankings by cosine use their embeddings averaged with the same weights (README, "More views of
each picture": a turn or a crop costs far less, a clean sprite about a point). ``images.picture_view``
makes a view; ``images.PicturePreprocess.views_of`` all of a picture's.
"""
from cn_clip_pokemon.errors import UserError

# (degrees turned counter-clockwise, share of the side), the picture as it is first
VIEWS = {
    "one": ((0, 1.0),),
    "turns": tuple((degrees, size) for size in (1.0, 0.85) for degrees in (0, -15, 15)),
}
PLAIN_VIEW_WEIGHT = 2.0


def check_views(views):
    """``views`` when it is one of VIEWS; else a UserError naming the choices."""
    if views not in VIEWS:
        raise UserError(f"views must be one of {', '.join(VIEWS)}, not {views!r}")
    return views


def view_weights(views):
    """How much each view of ``views`` counts, a tensor ``[V]`` summing to 1: the picture as it is
    PLAIN_VIEW_WEIGHT, each other view 1."""
    import torch

    weights = torch.ones(len(VIEWS[views]))
    weights[0] = PLAIN_VIEW_WEIGHT
    return weights / weights.sum()
