"""The "pokemon" dataset plugin: upstream's LMDBDataset with batches that never repeat a Pokemon.

Training selects it with ``--dataset pokemon`` (patches/0005); ``cn-clip-pokemon train`` adds that
flag by itself when the training LMDB sits in a dataset built by ``cn-clip-pokemon build-dataset``
(``DATASET/lmdb/train`` beside ``DATASET/dataset_info.json``). ``--dataset none`` keeps upstream's
shuffled DistributedSampler.

The pictures are read by upstream's own LMDBDataset; only the order changes: see sampler.py. Pairs
are grouped by Pokemon (dataset_info.json says which Pokemon each image shows), so two prompt
templates of one name never meet in a batch either; without dataset_info.json, by text. A dataset of
any captions (``build-dataset --any-names`` or ``--manifest``) stores its caption group as the
picture's "number" (pictures sharing a caption, see builder/captions.py), so neither a caption nor a picture
repeats in a batch.

Pair values are upstream's pickles, and a pickle can run code: every pair is read with
``dataset_format.safe_pair_loads`` (no imports, no calls), both when grouping (``read_pairs``) and
when training reads a sample (upstream's LMDBDataset, patches/0018), so a crafted dataset is
refused, never executed.
"""
from cn_clip_pokemon.dataset_format import info_path_of_split, read_dataset_info, read_pairs, training_framing
from cn_clip_pokemon.hookspecs import hookimpl
from cn_clip_pokemon.photo_augment import Chain, PhotoAugment, RandomChange, for_framing


def pair_groups(lmdb_split_dir):
    """One key per pair of the LMDB split, in pair order: ("pokemon", number) or ("text", text)."""
    numbers = {}
    info_path = info_path_of_split(lmdb_split_dir)
    if info_path.is_file():
        images = read_dataset_info(info_path).get("images", {})  # bounded, parsed once, one line when broken
        numbers = {image_id: meta.get("number") for image_id, meta in images.items()}
    groups = []
    for image_id, text in read_pairs(lmdb_split_dir):
        number = numbers.get(str(image_id))
        groups.append(("pokemon", number) if number is not None else ("text", text))
    return tuple(groups)


WHITE = (255, 255, 255)
# SpriteAugment's move and scale on a framed dataset: 90-105% of the size, up to 3% of the side either
# way (measured on #1-160: JPEG, half and quarter size cost 2, 0 and 6 points instead of 12, 3 and 19).
FRAMED_SCALE = (0.9, 1.05)
FRAMED_SHIFT = 0.03


class SpriteAugment(RandomChange):
    """Training-time changes to a stored picture (PIL RGB on white) that match how a Pokemon's views differ.

    A shiny sprite is the same drawing in other colours, a back sprite another pose of the same
    colours, and the sprites of one Pokemon differ in size and place in the square. So each picture
    is, each with its own probability: moved and scaled on white (``scale``, ``shift``: a share of
    the side), mirrored (``flip``), recoloured (``recolour``: hue turned by up to half of ``hue``
    turns either way, any angle with the default 1.0; saturation
    and brightness scaled; white and black stay as they are, as the outline and background of every
    sprite do), or made grey (``grey``: the shape alone). Output: a PIL RGB picture of the same size.

    Random numbers come from ``torch`` (seeded per DataLoader worker by upstream's training), or from
    ``generator`` (a ``torch.Generator``) when given, so a seed gives the same pictures.

    The defaults are what helped the tiny demo model on views it never saw (README, "The demo"):
    recolouring 30% of the pictures and greying 5%. Mirroring, moving and scaling, and stronger
    recolouring cost it more than they gave in the same ten minutes, so they are off by default;
    except on a dataset built with ``--framing subject``: there every door finds a user's subject give
    or take a pixel or two (JPEG ringing, a blur's halo, a resize move its box), so ``scale`` and
    ``shift`` left as None become FRAMED_SCALE and FRAMED_SHIFT (the dataset plugin sets them with
    :func:`~cn_clip_pokemon.photo_augment.for_framing`; None is no move or scale otherwise).
    """

    settings = ("flip", "recolour", "grey", "scale", "shift", "hue")

    def __init__(self, flip=0.0, recolour=0.3, grey=0.05, scale=None, shift=None, hue=1.0, generator=None):
        super().__init__(generator)
        self.flip, self.recolour, self.grey, self.hue = flip, recolour, grey, hue
        self.scale, self.shift = (None if scale is None else tuple(scale)), shift

    def for_framing(self, framing):
        framed = framing == "subject"
        unset = {"scale": FRAMED_SCALE if framed else (1.0, 1.0), "shift": FRAMED_SHIFT if framed else 0.0}
        unset = {name: value for name, value in unset.items() if getattr(self, name) is None}
        return self._with(**unset) if unset else self

    def __call__(self, image):
        import numpy as np
        from PIL import Image

        image = image.convert("RGB")
        width, height = image.size
        scales, shift = self.scale or (1.0, 1.0), self.shift or 0.0
        if scales != (1.0, 1.0) or shift:
            scale = self._uniform(*scales)
            dx, dy = (self._uniform(-shift, shift) * width, self._uniform(-shift, shift) * height)
            cx, cy = width / 2, height / 2
            # PIL's affine maps each output pixel to the input: x_in = (x_out - cx - dx) / scale + cx
            image = image.transform(
                image.size, Image.Transform.AFFINE,
                (1 / scale, 0, cx - (cx + dx) / scale, 0, 1 / scale, cy - (cy + dy) / scale),
                resample=Image.Resampling.BILINEAR, fillcolor=WHITE,
            )
        if self._uniform() < self.flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self._uniform() < self.recolour:
            hsv = np.array(image.convert("HSV"))
            turn = self._uniform(-self.hue / 2, self.hue / 2)  # a share of the colour wheel
            hsv[..., 0] += np.uint8(round(turn * 256) % 256)  # wraps around
            saturation, brightness = self._uniform(0.6, 1.4), self._uniform(0.75, 1.25)
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255).astype(np.uint8)
            drawn = (hsv[..., 1] > 0) | (hsv[..., 2] < 255)  # the white background stays white
            hsv[..., 2] = np.where(drawn, np.clip(hsv[..., 2] * brightness, 0, 255), 255).astype(np.uint8)
            image = Image.fromarray(hsv, "HSV").convert("RGB")
        if self._uniform() < self.grey:
            image = image.convert("L").convert("RGB")
        return image


class PictureToTensor:
    """Upstream's transform without augmentation (Resize((r, r), bicubic), RGB, ToTensor, Normalize), giving
    the same tensor; a picture already r x r in RGB (every picture the builder stored at the model's size)
    skips the resize, which returns a copy, and torchvision's per-call checks: at 32 px those were most of
    the transform's 0.2 ms a picture (bench/bench_loader.py). Any other picture goes through upstream's."""

    def __init__(self, upstream):
        import torch

        self.upstream = upstream
        resize, _, _, normalize = upstream.transforms
        self.size = tuple(resize.size)[::-1]  # PIL's (width, height)
        self.mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(normalize.std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def replacing(cls, transform):
        """A PictureToTensor for upstream's plain transform; any other (``--use-augment``'s) as it is."""
        from torchvision.transforms import Compose, Normalize, Resize, ToTensor

        steps = getattr(transform, "transforms", None) if isinstance(transform, Compose) else None
        kinds = (Resize, None, ToTensor, Normalize)
        if steps is None or len(steps) != 4 or not all(kind is None or isinstance(step, kind) for step, kind in zip(steps, kinds)):
            return transform
        if len(steps[0].size) != 2 or steps[3].inplace:
            return transform
        return cls(transform)

    def __call__(self, image):
        import numpy as np
        import torch

        if image.mode != "RGB" or image.size != self.size:
            return self.upstream(image)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return pixels.to(torch.float32).div(255).sub_(self.mean).div_(self.std)


class PokemonDataset:
    """Gives upstream's training its dataset, sampler and loader (patches/0005's get_dataset).

    ``augment``: a picture transform (PIL to PIL) applied to training pictures before upstream's own
    (resize, tensor, normalise; or timm's with ``--use-augment``), e.g. :class:`SpriteAugment`.
    """

    description = (
        "upstream LMDBDataset (pairs read without running code); batches never hold two pairs of the same Pokemon (or text), "
        "shrink when there are fewer than a batch, and reshuffle pictures every epoch"
    )

    def __init__(self, augment=None, description=None):
        self.augment = augment
        if description:
            self.description = description

    def get_dataset(self, args, is_train, max_txt_length=64, epoch_id=0):
        from cn_clip.training.data import LMDBDataset, fetch_resolution

        from cn_clip_pokemon.batching import unique_text_batches

        db_path = args.train_data if is_train else args.val_data
        # read (and closed) before LMDBDataset opens the same files: LMDB wants one environment
        # per file per process. Reading every pair here also refuses a crafted dataset before
        # any training starts.
        groups = pair_groups(db_path)
        dataset = LMDBDataset(
            db_path,
            split="train" if is_train else "val",
            max_txt_length=max_txt_length,
            use_augment=args.use_augment if is_train else False,
            resolution=fetch_resolution(args.vision_model),
        )
        dataset.transform = PictureToTensor.replacing(dataset.transform)
        if is_train and self.augment is not None:
            from torchvision.transforms import Compose

            # where the dataset's pictures are framed (--framing subject), a PhotoAugment frames them
            # again and a SpriteAugment moves and scales them slightly
            augment = for_framing(self.augment, training_framing(db_path))
            dataset.transform = Compose([augment, dataset.transform])
        return unique_text_batches(dataset, groups, args, is_train, epoch_id)


pokemon_dataset = PokemonDataset()
# the same, with training pictures changed the way views differ (see SpriteAugment)
pokemon_augmented_dataset = PokemonDataset(
    augment=SpriteAugment(),
    description="the pokemon dataset with some training pictures recoloured (hue turned, saturation and brightness "
    "scaled) or made grey (SpriteAugment), for views never seen in training; on a dataset built with --framing "
    "subject every picture is also moved by up to 3% and scaled to 90-105%",
)


# the same, and some training pictures made to look like users' pictures (see PhotoAugment): on a
# coloured or busy background, cropped, turned, small in the square, JPEG, low resolution, blurred.
# Measured on the demo's tiny model (README, "Training for users' pictures"): it holds up far better
# on such pictures and loses much of its accuracy on clean ones within the same steps, so the demo's
# recipe keeps pokemon-augmented; a longer run or a larger model is where this one belongs.
pokemon_photo_dataset = PokemonDataset(
    augment=Chain(SpriteAugment(), PhotoAugment(background=0.3, crop=0.15, rotate=0.15, canvas=0.15, jpeg=0.1,
                                                 low_resolution=0.15, blur=0.1)),
    description="pokemon-augmented, and some training pictures on a coloured or busy background, cropped, turned, "
    "small in the square, JPEG-compressed, shrunk or blurred (PhotoAugment), for users' pictures",
)


@hookimpl
def register_datasets(register):
    register("pokemon", pokemon_dataset)
    register("pokemon-augmented", pokemon_augmented_dataset)
    register("pokemon-photo", pokemon_photo_dataset)
