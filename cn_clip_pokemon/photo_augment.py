"""Training-time changes that make a stored sprite look like a picture a user takes.

A training picture is stored as the builder made it: the sprite on white, padded to a square. Users'
pictures are cropped, turned, small inside a larger picture, on a coloured or busy background,
JPEG-compressed, rescaled or blurred (what ``evaluate --perturb`` measures). :class:`PhotoAugment`
gives a share of the training pictures such changes, each with its own probability, in this order:

- geometry, on white: a crop (``crop``: a random square of 70-100% of the side, resized back), a turn
  (``rotate``: up to ``max_degrees`` either way, the corners white), or the picture made smaller inside
  the square (``canvas``: 45-90% of the side, placed anywhere, white around it);
- background (``background``): the white around the sprite (white connected to the picture's border,
  grown from it pixel by pixel, so white inside the Pokemon stays) becomes one colour (any, grey and black
  included) or a smooth field of random colours with pixel noise;
- quality: JPEG at quality 15-75 (``jpeg``), shrunk to 25-75% of the side and back (``low_resolution``),
  or a Gaussian blur of 0.5-1.5 px (``blur``).

On a dataset built with ``--framing subject`` (``framed``; the dataset plugin sets it from the
dataset's framing with :func:`for_framing`), a picture is framed again after a crop or a turn and on
one colour, as every door frames a user's picture. On a busy background every door cuts the subject
out (images.cut_out_subject, GrabCut, about 0.1 s a picture: too slow for the training loader), so
there training keeps the frame (the subject made smaller on it with ``canvas``): what a door shows the
model when no single subject stands out and the cut is not taken.

Random numbers come from ``torch`` (seeded per DataLoader worker by upstream's training) or from
``generator`` (a ``torch.Generator``), so a seed gives the same pictures. The generators of these
changes are not those of ``evaluate --perturb`` (other background fields, crop and turn drawn from
ranges rather than its fixed 80% and 15 degrees), so the table it prints measures pictures training
did not make.
"""
import io
import os

WHITE = (255, 255, 255)


class RandomChange:
    """A training-time picture change drawing its random numbers from ``torch`` (seeded per DataLoader
    worker by upstream's training) or from ``generator``; ``settings`` names what ``repr`` shows."""

    settings = ()

    def __init__(self, generator=None):
        self.generator = generator

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{name}={getattr(self, name)!r}' for name in self.settings)})"

    # numbers drawn from torch at a time: one torch.rand call per picture cost about as much as the
    # change itself at 32 px (seven calls a picture were an eighth of the data loader's time)
    DRAWS = 64

    def _uniform(self, low=0.0, high=1.0):
        import torch

        draws = self.__dict__.get("_draws")
        # a process of its own (a DataLoader worker, forked or spawned) draws its own numbers
        if draws is None or draws[0] != os.getpid() or not draws[1]:
            draws = self._draws = (os.getpid(), torch.rand(self.DRAWS, generator=self.generator).tolist()[::-1])
        return low + (high - low) * draws[1].pop()

    def _chance(self, probability):
        return probability > 0 and self._uniform() < probability

    def for_framing(self, framing):
        """This change set for a dataset whose pictures were framed ``framing`` (a copy where that
        sets anything; see :func:`for_framing`)."""
        return self

    def _with(self, **settings):
        """A copy of this change with ``settings`` (the registered object stays as it is)."""
        import copy

        changed = copy.copy(self)
        changed.__dict__.pop("_draws", None)  # its own numbers, not a share of this one's
        changed.__dict__.update(settings)
        return changed


def _scaled(image, share):
    """``image`` resized (bicubic) to ``share`` of each side, at least 1 pixel."""
    from PIL import Image

    return image.resize((max(1, round(image.width * share)), max(1, round(image.height * share))), Image.BICUBIC)


def _framed_again(image):
    """``image`` (RGB on white) as every door frames it for a "subject" checkpoint, back at its size;
    except that a crop leaving no one-colour border keeps its frame, where a door would try to cut the
    subject out (GrabCut, about 0.1 s a picture: with 15% of the pictures cropped and 20% turned, training
    on the demo's framed dataset took 1.0 s a step waiting for pictures, 0.27 s without the cut, 2 threads,
    AMD EPYC with AVX-512; see images.frame_subject)."""
    from cn_clip_pokemon.images import fit_square, frame_subject

    return fit_square(frame_subject(image, cut_out=False), image.width)


class PhotoAugment(RandomChange):
    settings = ("background", "crop", "rotate", "canvas", "jpeg", "low_resolution", "blur", "max_degrees", "framed")

    def __init__(self, background=0.0, crop=0.0, rotate=0.0, canvas=0.0, jpeg=0.0, low_resolution=0.0, blur=0.0,
                 max_degrees=20.0, framed=None, generator=None):
        super().__init__(generator)
        self.background, self.crop, self.rotate, self.canvas = background, crop, rotate, canvas
        self.jpeg, self.low_resolution, self.blur = jpeg, low_resolution, blur
        self.max_degrees = max_degrees
        self.framed = framed

    def for_framing(self, framing):
        return self if self.framed is not None else self._with(framed=framing == "subject")

    def __call__(self, image):
        from PIL import Image, ImageFilter

        image = image.convert("RGB")
        side = image.size
        moved = False
        if self._chance(self.crop):
            share = self._uniform(0.7, 1.0)
            width, height = round(side[0] * share), round(side[1] * share)
            left, top = round(self._uniform(0, side[0] - width)), round(self._uniform(0, side[1] - height))
            image = image.crop((left, top, left + width, top + height)).resize(side, Image.BICUBIC)
            moved = True
        if self._chance(self.rotate):
            degrees = self._uniform(-self.max_degrees, self.max_degrees)
            image = image.rotate(degrees, resample=Image.BICUBIC, fillcolor=WHITE)
            moved = True
        if self.framed and moved:
            # framed pictures (build-dataset --framing subject): every door frames the subject again
            image = _framed_again(image)
        if self.framed:
            # every door frames a picture on one colour back to its subject (what the colour hides of
            # it, such as a black outline on black, is lost), so that is what training sees; on a busy
            # background a picture keeps its frame, the subject at any size and place on it (a door cuts
            # a busy background away; what it shows when the cut is not taken)
            if self._chance(self.background):
                if self._uniform() < 0.5:
                    image = _framed_again(self._on_background(image, fields=False))
                else:
                    if self._chance(self.canvas):
                        image = self._smaller(image)
                    image = self._on_background(image, colours=False)
        else:
            if self._chance(self.canvas):
                image = self._smaller(image)
            if self._chance(self.background):
                image = self._on_background(image)
        if self._chance(self.jpeg):
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=round(self._uniform(15, 75)))
            buffer.seek(0)
            image = Image.open(buffer).convert("RGB")
        if self._chance(self.low_resolution):
            image = _scaled(image, self._uniform(0.25, 0.75)).resize(side, Image.BICUBIC)
        if self._chance(self.blur):
            image = image.filter(ImageFilter.GaussianBlur(radius=self._uniform(0.5, 1.5)))
        return image

    def _smaller(self, image):
        """``image`` made 45-90% of its side, placed anywhere in the square, white around it."""
        from PIL import Image

        side = image.size
        small = _scaled(image, self._uniform(0.45, 0.9))
        image = Image.new("RGB", side, WHITE)
        image.paste(small, (round(self._uniform(0, side[0] - small.width)), round(self._uniform(0, side[1] - small.height))))
        return image

    def _on_background(self, image, colours=True, fields=True):
        """The white connected to the border replaced by a colour or a busy field (half the time each;
        one of them alone when ``colours`` or ``fields`` is False)."""
        import numpy as np
        from PIL import Image

        pixels = np.asarray(image)
        outside = border_white(pixels)
        if not outside.any():
            return image
        if not fields or (colours and self._uniform() < 0.5):  # one colour
            fill = np.array([round(self._uniform(0, 255)) for _ in range(3)], dtype=np.float32)
            background = np.broadcast_to(fill, pixels.shape)
        else:  # a smooth field of random colours, some noise on it
            import torch

            cells = round(self._uniform(2, 8))
            field = (torch.rand((cells, cells, 3), generator=self.generator) * 255).numpy().astype(np.uint8)
            background = np.asarray(Image.fromarray(field, "RGB").resize(image.size, Image.BICUBIC), dtype=np.float32)
            noise = torch.randn(pixels.shape, generator=self.generator).numpy() * self._uniform(0, 20)
            background = background + noise
        mixed = np.where(outside[..., None], np.clip(background, 0, 255), pixels).astype(np.uint8)
        return Image.fromarray(mixed, "RGB")


def border_white(pixels, threshold=245):
    """Which pixels of an RGB array are white (every channel >= ``threshold``) and connected to the
    picture's border through white, 4-neighbour (images.connected_to_border: grown from the border one pixel a round, in
    numpy): 0.6 ms for a 64 px sprite, against 5.4 ms for PIL's flood fill, which walks pixels in Python
    (on 2 cores the loader's worker shares the machine with training, so its time is training's)."""
    from cn_clip_pokemon.images import connected_to_border

    return connected_to_border((pixels >= threshold).all(axis=-1))


def for_framing(transform, framing):
    """``transform`` (a RandomChange, a Chain holding some, or any other) for a dataset whose pictures
    were framed ``framing`` (dataset_format.FRAMINGS): each RandomChange's ``for_framing`` (a
    PhotoAugment frames again, a SpriteAugment moves and scales slightly, where not given explicitly),
    the registered objects left as they are; anything else as it is."""
    if isinstance(transform, RandomChange):
        return transform.for_framing(framing)
    if isinstance(transform, Chain):
        return Chain(*(for_framing(each, framing) for each in transform.transforms))
    return transform


class Chain:
    """Picture transforms applied one after another (PIL to PIL): torchvision's ``Compose``, without
    importing torchvision when the plugins load (every command loads them; training's loader then puts
    the chain inside upstream's own ``Compose``)."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def __repr__(self):
        return " then ".join(map(repr, self.transforms))

    def __call__(self, image):
        for transform in self.transforms:
            image = transform(image)
        return image
