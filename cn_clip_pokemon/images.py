"""The one place that opens a picture, for every stage (builder, inference, grids).

``open_picture`` returns RGB with transparent pixels composited on white (upstream's
``convert("RGB")`` turns them black or into leftover palette colours), EXIF-rotated, from any mode
Pillow reads (RGBA, LA, P with transparency, CMYK, 16-bit, ...), any frame of an animation, and
SVG when the optional renderer is installed (``pip install cn-clip-pokemon[svg]``, CairoSVG);
``read_picture`` is the same opening with transparency kept (``open_picture`` composites it on white).
``frame_subject`` crops a picture to its subject on white (``build-dataset --framing subject``, and
every door for a checkpoint trained on such pictures: ``framed_picture``).
``fit_square`` pads to a square on white and resizes; ``encode_picture`` gives exactly the urlsafe
base64 PNG that upstream's ``LMDBDataset`` decodes. ``PicturePreprocess`` is the model's
``preprocess`` for every door (the Python API's ``load_model``, the commands, the page): these
steps, then upstream's ``image_transform``.
"""
import base64
import io
import time
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from cn_clip_pokemon.dataset_format import check_framing
from cn_clip_pokemon.errors import UserError, install_hint
from cn_clip_pokemon.safe_reading import open_regular
from cn_clip_pokemon.views import VIEWS, check_views, view_weights

WHITE = (255, 255, 255)
# Longest side of a rendered SVG: larger than any storage size we use, so resizing only shrinks.
SVG_SIZE = 512
# PNG zlib level for stored pictures: level 1 encodes several times faster than the default 6
# and the files of padded, upscaled pictures stay within a few percent of it.
PNG_COMPRESS_LEVEL = 1
# Longest side fit_square pads at full size: a 4096^2 RGB canvas is 64 MB. Longer pictures are shrunk
# first, so a thin strip cannot ask for a canvas of its length squared.
MAX_CANVAS_SIDE = 4096


class PictureError(UserError):
    """A picture that cannot be opened: empty, truncated, not a picture, too large, bad frame."""


def _source_name(source):
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", None) or "<picture>"


def _looks_like_svg(head):
    head = head.lstrip()
    return head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head)


def render_svg(source, size=SVG_SIZE):
    """Rasterise an SVG file or file object to RGBA, longest side ``size`` (needs CairoSVG)."""
    try:
        import cairosvg
    except ImportError:
        raise PictureError(
            f"{_source_name(source)}: SVG needs the optional renderer: {install_hint('svg')} "
            "(CairoSVG, which uses the system's libcairo), or convert it to PNG first"
        ) from None
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source.read()
    try:
        # Render once at the SVG's own size to learn its aspect, then at the size we want.
        natural = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=data)))
        width, height = natural.size
        scale = size / max(width, height, 1)
        png = cairosvg.svg2png(
            bytestring=data, output_width=max(1, round(width * scale)), output_height=max(1, round(height * scale))
        )
    except Exception as error:  # CairoSVG raises many types (XML, CSS, cairo) for bad files
        raise PictureError(f"{_source_name(source)}: cannot render SVG ({error})") from None
    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGBA")


def _with_alpha_mode(image):
    """``image`` as RGBA when it has transparency of any kind (alpha, LA, a palette or RGB key), else as it is."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _to_8bit_gray(image)
    if image.mode in ("P", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        return image.convert("RGBA")
    return image


def composite_on_white(image, background=WHITE):
    """RGB from any mode: alpha (or a palette/RGB transparency key) blended onto white, or onto
    ``background`` (an RGB colour, or a PIL image of the picture's size)."""
    image = _with_alpha_mode(image)
    if image.mode == "RGBA":
        if isinstance(background, Image.Image):
            canvas = background.convert("RGB")
        else:
            canvas = Image.new("RGB", image.size, tuple(background))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _to_8bit_gray(image):
    """16- and 32-bit grayscale scaled to 0-255 (Pillow's own convert clips, so 16-bit goes white)."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    elif image.mode == "I" and values.size and values.max() <= 255:
        top = 255.0
    else:
        top = 65535.0
    return Image.fromarray(np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8), "L")


def _apply_icc_profile(image):
    """Convert pictures with an embedded ICC profile (CMYK print files, wide-gamut photos) to sRGB."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        from PIL import ImageCms

        source_profile = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        output_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(image, source_profile, ImageCms.createProfile("sRGB"), outputMode=output_mode)
    except Exception:
        # A broken or unsupported profile: the plain conversion is still a usable picture.
        return image


def open_picture(source, frame=0, svg_size=SVG_SIZE, marks=None):
    """Open ``source`` (path, binary file object, or a PIL image) as an RGB PIL image, composited on white.

    A PIL image (any mode, as ``Image.open`` gives it or made in memory) goes through the same steps
    as a file: EXIF rotation (its first frame), ICC profile to sRGB, transparency on white; ``frame``
    is then the frame it is at. The result is idempotent: opening it again changes nothing.
    ``frame`` picks the frame of an animated GIF/WebP/APNG (0 = first). Raises PictureError
    (a UserError) naming the file for empty, truncated, unreadable, oversized pictures and for a
    frame the picture does not have. ``marks``, a list, gets this process's CPU time
    (``time.process_time()``) at the end of decoding, before compositing: the builder's profile.
    """
    name = _source_name(source)
    picture = read_picture(source, frame, svg_size, marks)
    try:
        return _srgb_on_white(picture)
    except Exception as error:  # a mode or profile that cannot become RGB
        raise damaged_picture(getattr(source, "filename", None) or name, error) from None


def read_picture(source, frame=0, svg_size=SVG_SIZE, marks=None):
    """:func:`open_picture` before its composite on white: the same safe opening (no waiting on a
    FIFO, the decompression-bomb guard, EXIF rotation, ICC profile to sRGB, 16-bit scaled to 8 bits,
    one-line PictureError), transparency kept. ``composite_on_white`` of it is ``open_picture``'s picture."""
    name = _source_name(source)
    if isinstance(source, Image.Image):
        try:
            source.load()
            picture = ImageOps.exif_transpose(source) if source.tell() == 0 else source.copy()
        except Exception as error:
            raise damaged_picture(getattr(source, "filename", None) or name, error) from None
        return _decoded(picture, getattr(source, "filename", None) or name)
    if isinstance(source, (str, Path)):
        try:
            # never blocks: a FIFO or a device put in a picture's place is refused, not waited on
            with open_regular(source) as file:
                return _read_picture_file(file, name, frame, svg_size, str(source).lower().endswith((".svg", ".svgz")), marks)
        except OSError as error:  # opening or reading the file itself
            raise PictureError(f"{name}: cannot read ({error.strerror or error})") from None
    return _read_picture_file(source, name, frame, svg_size, name.lower().endswith((".svg", ".svgz")), marks)


def _decoded(picture, name):
    """The sRGB, 8-bit picture: its ICC profile applied, 16/32-bit grayscale scaled to 0-255."""
    try:
        picture = _apply_icc_profile(picture)
        picture.info.pop("icc_profile", None)  # applied: opening the result again must not apply it twice
        if picture.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            picture = _to_8bit_gray(picture)
        return picture
    except Exception as error:  # a mode or profile that cannot become RGB
        raise damaged_picture(name, error) from None


def _read_picture_file(source, name, frame, svg_size, svg_name, marks=None):
    position = source.tell()
    head = source.read(512)
    source.seek(position)
    if not head:
        raise PictureError(f"{name}: empty file (0 bytes)")
    if svg_name or _looks_like_svg(head):
        if frame:
            raise PictureError(f"{name}: an SVG has one frame; asked for frame {frame}")
        rendered = render_svg(source, svg_size)
        if marks is not None:
            marks.append(time.process_time())
        return rendered
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; refuse both alike. Its other
        # warnings (a TIFF's "Truncated File Read") end in the one error below or in a picture.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:
                frames = getattr(image, "n_frames", 1)
                if not 0 <= frame < frames:
                    raise PictureError(f"{name}: has {frames} frame(s); frame {frame} does not exist")
                if frame:
                    image.seek(frame)
                image.load()
                picture = ImageOps.exif_transpose(image) if frame == 0 else image.copy()
        except PictureError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise PictureError(
                f"{name}: too many pixels, refused as a possible decompression bomb ({error}); "
                "shrink the picture first"
            ) from None
        except Image.UnidentifiedImageError:
            raise PictureError(f"{name}: not a picture Pillow can read") from None
        except Exception as error:
            raise damaged_picture(name, error) from None
    if marks is not None:
        marks.append(time.process_time())
    return _decoded(picture, name)


def damaged_picture(name, error):
    """The PictureError for a picture Pillow fails on, whatever it raised: the one opening rule of the
    builder, inference and the page. Pillow reports truncated or corrupt data as OSError ("image file
    is truncated"), SyntaxError (broken headers) or EOFError, but its decoders also raise IndexError
    (damaged QOI), TypeError (a TIFF without dimensions), RuntimeError (AVIF) and more."""
    lines = str(error).strip().splitlines()
    detail = lines[0][:200] if lines else ""
    if not isinstance(error, (OSError, SyntaxError, ValueError, EOFError)):
        detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return PictureError(f"{name}: damaged or truncated picture ({detail})")


def _srgb_on_white(picture):
    """The last step of every opening: transparency on white, and an ``info`` that no longer
    claims a profile or a transparent colour (both are applied), so opening the result again is a no-op."""
    result = composite_on_white(picture)
    for key in ("icc_profile", "transparency"):
        result.info.pop(key, None)
    return result


def fit_square(image, size, resample=None):
    """Pad ``image`` with white to a square (keeping its aspect), then resize to ``size`` x ``size``.

    Default filters: shrinking uses LANCZOS. Enlarging by 2x or more is pixel art here (sprites,
    ~50 px to 224), so it scales by a whole factor with NEAREST: every sprite pixel becomes a sharp
    block of equal size. When a whole factor that divides ``size`` fits (50 px -> 4x in a 56 px
    canvas -> 224), the margin takes the remainder and no other filter touches the picture; else
    NEAREST by the largest whole factor is finished with BICUBIC. (Plain NEAREST to a fractional
    factor gives uneven pixel widths; plain BICUBIC smears the outlines.) Smaller enlargements use
    BICUBIC, like upstream's own preprocessing.

    Memory is bounded by the output, never by the picture's aspect ratio: the white square costs
    side x side pixels (60,000^2, 14 GB, for a 1 x 60,000 strip of 300 bytes), so a picture longer
    than MAX_CANVAS_SIDE (or than ``size``, when that is larger) is first shrunk to that length,
    keeping its aspect. Every picture up to that length is padded and resized exactly as before.
    """
    image = _shrunk_to(image, max(MAX_CANVAS_SIDE, size))
    width, height = image.size
    side = max(width, height)
    canvas, factor = side, 1
    if resample is None and side < size and size // side >= 2:
        exact = max((f for f in range(2, size // side + 1) if size % f == 0), default=0)
        # Use the exact factor when the picture still fills most of the square (80%) with it.
        if exact and side * exact >= 0.8 * size:
            canvas, factor = size // exact, exact
        else:
            factor = size // side
    if (width, height) != (canvas, canvas) or image.mode != "RGB":
        square = Image.new("RGB", (canvas, canvas), WHITE)
        square.paste(image.convert("RGB"), ((canvas - width) // 2, (canvas - height) // 2))
        image = square
    if factor > 1:
        image = image.resize((canvas * factor, canvas * factor), Image.Resampling.NEAREST)
    if image.size == (size, size):
        return image
    if resample is not None:
        return image.resize((size, size), resample)
    if image.width > size:
        return image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.resize((size, size), Image.Resampling.BICUBIC)


# Framing (dataset_format.FRAMINGS): "as-is" keeps the picture's own frame; "subject" crops it to
# its subject and makes the background white (frame_subject).
# A pixel is the border's colour when no channel differs from it by more than this (JPEG noise, a
# flat background saved lossily); the border is a background when this share of it is that colour.
BACKGROUND_TOLERANCE = 12
UNIFORM_BORDER = 0.5
# The subject's box holds the pixels that differ from the background by more than this: a JPEG's
# ringing, a blur's halo or a resize's overshoot around the subject does not widen it.
SUBJECT_CONTRAST = 48
# The background's flood runs on a copy at most this long, so its rounds stay few whatever the size (framing
# a 50 x 46 sprite frame took 0.06 ms, a 12-megapixel product shot 0.33 s: shrinking it to FRAMING_LIMIT
# 0.19-0.20 s, its colours' distance 0.09 s, the flood 5 ms; AMD EPYC with AVX-512, 2 cores, idle).
FRAMING_SIDE = 256
# A picture longer than this is shrunk to it before it is framed, so framing's memory is bounded whatever
# the picture's size (numpy's and Pillow's allocations peaked at 102 MiB for 2048 x 2048 and 96 MiB for
# 8000 x 8000, traced); every upstream model's input, and any stored size up to this, keeps its detail.
FRAMING_LIMIT = 2048


def frame_subject(picture, cut_out=True):
    """``picture`` (as :func:`read_picture` gives it: any mode, transparency kept) as an RGB picture
    of its subject alone on white, cropped to the subject's box.

    The background is the transparent pixels when the picture has any (a sprite); else, when at
    least UNIFORM_BORDER of the picture's outer pixels share one colour (a screenshot, a product
    shot, a sprite pasted on grey or black, a picture inside a larger white canvas), the pixels of
    that colour connected to the border; with neither (a photo), what :func:`cut_out_subject` cuts
    out (GrabCut, about 0.1 s) when one subject stands out. Otherwise the picture keeps its frame and
    its background: it is only put on white where it is transparent, as :func:`open_picture` does.
    ``cut_out=False`` keeps a photo's frame without trying (the training loader's PhotoAugment: a crop
    cutting into the subject leaves such a border, and 0.1 s a picture would stall training).
    A picture longer than FRAMING_LIMIT is shrunk to it first.
    """
    import numpy as np

    image = _shrunk_to(_with_alpha_mode(picture), FRAMING_LIMIT)  # any transparency is RGBA by now
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        if alpha.getextrema()[0] < 255:
            box = alpha.point(lambda value: 255 if value >= 128 else 0).getbbox()
            on_white = composite_on_white(image)
            return on_white.crop(box) if box else on_white
    rgb = composite_on_white(image)
    pixels = np.asarray(rgb, dtype=np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = np.round(np.median(border, axis=0)).astype(np.int16)  # int16 arithmetic, not float64's
    if np.mean(np.abs(border - colour).max(axis=1) <= BACKGROUND_TOLERANCE) < UNIFORM_BORDER:
        subject = cut_out_subject(rgb) if cut_out else None  # a busy background: cut out, or the frame kept
        return rgb if subject is None else _subject_on_white(pixels, ~subject, subject)
    distance = np.abs(pixels - colour).max(axis=2)  # from the border's colour, per pixel
    background = connected_to_border(distance <= BACKGROUND_TOLERANCE)
    if background.all():
        return rgb  # one flat colour: no subject to crop to
    subject = ~background & (distance > SUBJECT_CONTRAST)
    return _subject_on_white(pixels, background, subject if subject.any() else ~background)


def _subject_on_white(pixels, background, subject):
    """The RGB array ``pixels`` with its ``background`` made white, cropped to the box of ``subject``
    (boolean arrays of its shape; ``subject`` has a pixel)."""
    import numpy as np

    framed = pixels.astype(np.uint8).copy()
    framed[background] = 255
    rows, columns = np.nonzero(subject)
    box = (int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1)
    return Image.fromarray(framed, "RGB").crop(box)


# A busy background (a photo: a toy on a desk, a sprite on a patterned field) is cut away with OpenCV's
# GrabCut (colour models of the subject and of the background, a graph cut between them), seeded with
# the picture less a thin frame as "maybe subject" and the frame as background. It runs on a copy
# CUTOUT_SIDE long (a 96 px sprite is cut at twice its size: at its own size the cut's smoothing took
# whole sprites for background; bigger photos are cut on a shrunk copy, so the cost stays ~0.1 s), for
# CUTOUT_ROUNDS rounds, and is kept only when it looks like one subject: its largest piece holds
# CUTOUT_WHOLE of what was cut out, which covers CUTOUT_SHARE of the picture. Otherwise (noise, a
# texture, a scene with no one subject) the picture keeps its frame, as before.
CUTOUT_SIDE = 192
CUTOUT_INSET = 0.02
CUTOUT_ROUNDS = 3
CUTOUT_SHARE = (0.02, 0.85)
CUTOUT_WHOLE = 0.9


def cut_out_subject(rgb):
    """The subject of ``rgb`` (a PIL RGB picture on a busy background) as a boolean array of its
    pixels, or None when no single subject stands out (see CUTOUT_SIDE). The same picture always gives
    the same cut (OpenCV's random numbers are seeded before each cut)."""
    import numpy as np

    try:
        import cv2
    except ImportError:  # a broken install: the frame is kept, as before cutting out existed
        return None
    width, height = rgb.size
    if min(width, height) < 8:
        return None
    scale = CUTOUT_SIDE / max(width, height)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    work = np.ascontiguousarray(np.asarray(rgb.resize(size, Image.Resampling.BICUBIC))[..., ::-1])  # BGR
    inset = max(1, round(min(size) * CUTOUT_INSET))
    mask = np.zeros(work.shape[:2], np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(work, mask, (inset, inset, size[0] - 2 * inset, size[1] - 2 * inset), np.zeros((1, 65)),
                np.zeros((1, 65)), CUTOUT_ROUNDS, cv2.GC_INIT_WITH_RECT)
    cut = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    total = int(cut.sum())
    if not CUTOUT_SHARE[0] <= total / cut.size <= CUTOUT_SHARE[1]:
        return None
    _, labels, stats, _ = cv2.connectedComponentsWithStats(cut, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < CUTOUT_WHOLE * total:
        return None
    piece = Image.fromarray(((labels == largest) * 255).astype(np.uint8), "L")
    subject = np.asarray(piece.resize((width, height), Image.Resampling.BILINEAR)) >= 128
    return subject if subject.any() else None


def connected_to_border(close):
    """The pixels of the boolean mask ``close`` connected (4-neighbours) to the picture's border
    through ``close`` pixels. Found on a copy at most FRAMING_SIDE long, then taken back to full size
    (and kept only where ``close`` is), so the cost does not grow with a photo's megapixels."""
    import numpy as np

    height, width = close.shape
    scale = max(1, -(-max(height, width) // FRAMING_SIDE))
    small = close[::scale, ::scale] if scale > 1 else close
    reached = np.zeros_like(small)
    reached[0], reached[-1], reached[:, 0], reached[:, -1] = small[0], small[-1], small[:, 0], small[:, -1]
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= small
        if (grown == reached).all():
            break
        reached = grown
    if scale > 1:
        reached = np.repeat(np.repeat(reached, scale, axis=0), scale, axis=1)[:height, :width]
    return reached & close


def framed_picture(source, framing="as-is", marks=None):
    """``source`` opened as every door and the builder open it: :func:`open_picture` (transparency on
    white) for ``"as-is"``; for ``"subject"``, :func:`read_picture` then :func:`frame_subject`.
    ``marks`` as for :func:`open_picture`."""
    if check_framing(framing) == "subject":
        try:
            return frame_subject(read_picture(source, marks=marks))
        except PictureError:
            raise
        except Exception as error:  # a mode that cannot become RGB
            raise damaged_picture(_source_name(source), error) from None
    return open_picture(source, marks=marks)


def _shrunk_to(image, longest):
    """``image`` shrunk (LANCZOS, keeping its aspect) so its longer side is at most ``longest``; as it is
    when it already fits. The one bound of fit_square's canvas and of frame_subject's arrays."""
    width, height = image.size
    side = max(width, height)
    if side <= longest:
        return image
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")  # a palette picture would resize by nearest neighbour
    scale = longest / side
    return image.resize(
        (min(longest, max(1, round(width * scale))), min(longest, max(1, round(height * scale)))),
        Image.Resampling.LANCZOS,
        reducing_gap=3.0,
    )


def square_picture(source, size, framing="as-is"):
    """``source`` (a path, a binary file object or a PIL image, any mode) as the model sees it, before
    its tensor: opened by :func:`framed_picture` (transparency on white; with ``framing="subject"``
    cropped to its subject on white), padded to a square on white and resized to ``size`` by
    :func:`fit_square`, exactly as the builder stores pictures."""
    return fit_square(framed_picture(source, framing), size)


def picture_view(square, degrees, size, framing="as-is"):
    """One view (``views.VIEWS``) of ``square``, a model-sized square on white as :func:`fit_square` makes it
    (so a dataset's stored picture and the file it was built from give the same views):
    turned by ``degrees`` (counter-clockwise, the corners white; framed again to its subject when
    ``framing`` is "subject", as every door frames a picture), then shrunk to ``size`` of the side and
    centred on white. ``(0, 1.0)`` is ``square`` itself."""
    side = square.width
    view = square
    if degrees:
        turned = square.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=WHITE)
        view = fit_square(frame_subject(turned, cut_out=False) if framing == "subject" else turned, side)
    if size != 1.0:
        small = view.resize((max(1, round(side * size)),) * 2, Image.Resampling.BICUBIC)
        view = Image.new("RGB", (side, side), WHITE)
        view.paste(small, ((side - small.width) // 2, (side - small.height) // 2))
    return view


class PicturePreprocess:
    """The ``preprocess`` of every door (``load_model``, ``classify``, ``search``, ``evaluate``, the
    page): ``preprocess(picture)`` gives the model's input tensor ``[3, R, R]`` for a path, a binary
    file object or a PIL image of any mode (RGBA, LA, P with transparency, 16-bit, CMYK, ...).

    It is :func:`square_picture` (on white, padded square, ``R`` pixels; ``framing``: the checkpoint's,
    "subject" when it was trained on pictures built with ``build-dataset --framing subject``), then
    upstream's own ``cn_clip.clip.utils.image_transform(R)`` (kept as ``.transform``): upstream's
    transform alone would show transparent pixels as they are stored, usually black, and squash a
    picture that is not square. A picture that cannot be opened raises :class:`PictureError` naming it.

    ``views`` (``views.VIEWS``, ``--views`` of every command): what the doors show the model of each picture;
    :meth:`views_of` gives their tensors (the first is ``preprocess(picture)``), :attr:`view_weights`
    how much each counts.
    """

    def __init__(self, resolution, framing="as-is", views="one"):
        from cn_clip.clip.utils import image_transform

        self.resolution = int(resolution)
        self.framing = check_framing(framing)
        self.views = check_views(views)
        # how a turned view is framed again: the checkpoint's framing, also for pictures stored framed
        self.view_framing = self.framing
        self.transform = image_transform(self.resolution)

    def __call__(self, picture):
        return self.transform(square_picture(picture, self.resolution, self.framing))

    def views_of(self, picture):
        """The input tensors of every view of ``picture``, ``[V, 3, R, R]``, in VIEWS order (the first is
        ``self(picture)``): the picture opened once, each view made from its square (:func:`picture_view`)."""
        import torch

        square = square_picture(picture, self.resolution, self.framing)
        return torch.stack([self.transform(picture_view(square, degrees, size, self.view_framing))
                            for degrees, size in VIEWS[self.views]])

    @property
    def view_count(self):
        return len(VIEWS[self.views])

    @property
    def view_weights(self):
        """How much each view counts (``views.view_weights``), ``[V]`` summing to 1."""
        return view_weights(self.views)

    def as_stored(self):
        """The preprocess of pictures a dataset already stores framed: the same, framing "as-is" (a turned
        view is still framed again as the checkpoint frames pictures)."""
        if self.framing == "as-is":
            return self
        import copy

        stored = copy.copy(self)
        stored.framing = "as-is"
        return stored

    @property
    def transforms(self):
        """Upstream's steps (``Resize``, ``ToTensor``, ``Normalize``...), as its ``Compose`` lists them."""
        return self.transform.transforms

    def __repr__(self):
        opening = "frame_subject (its subject on white)" if self.framing == "subject" else "open_picture (on white)"
        views = "" if self.views == "one" else f", views={self.views!r}"
        return f"PicturePreprocess({self.resolution}, framing={self.framing!r}{views}): {opening} -> fit_square -> {self.transform!r}"


def encode_picture(image):
    """urlsafe base64 of a PNG of ``image``: the string upstream's LMDBDataset decodes."""
    return png_text(png_bytes(image)).decode("ascii")


def png_text(png):
    """:func:`encode_picture`'s text of the PNG bytes ``png``, as ASCII bytes (the builder's workers send
    these: the TSV and LMDB take them as they are, with no str made in between)."""
    return base64.urlsafe_b64encode(png)


def png_bytes(image):
    """The PNG of ``image`` that :func:`encode_picture` encodes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def decode_picture(text):
    """The inverse of encode_picture, as upstream does it (urlsafe_b64decode, then PIL)."""
    return Image.open(io.BytesIO(base64.urlsafe_b64decode(text)))
