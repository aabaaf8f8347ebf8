"""Reading one split of a built dataset: its pictures (LMDB, or the TSV when there is no LMDB), its
texts, and what ``dataset_info.json`` says about each picture (name, captions, source file).

``search``, ``evaluate`` and ``serve`` read splits through :class:`SplitPictures` only.
"""
import base64
import io
import json
from pathlib import Path

from cn_clip_pokemon.dataset_format import (
    EVAL_SPLIT,
    dataset_framing,
    images_tsv,
    info_path,
    lmdb_dir,
    lmdb_images,
    lmdb_pairs,
    read_dataset_info,
    texts_jsonl,
)
from cn_clip_pokemon.errors import UserError


class SplitPictures:
    """The pictures of one split of a built dataset, read from its LMDB (or its TSV when no LMDB).

    ``storage`` is the file the pictures are read from (``lmdb/{split}/imgs/data.mdb`` or
    ``{split}_imgs.tsv``); ``image_ids`` are sorted. Close it when done (or use it in ``with``).
    """

    def __init__(self, dataset_dir, split=EVAL_SPLIT):
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        if not self.dataset_dir.is_dir():
            raise UserError(f"dataset folder {self.dataset_dir} does not exist: build it with `cn-clip-pokemon build-dataset`")
        self.lmdb_dir = lmdb_images(lmdb_dir(self.dataset_dir, split))
        self.tsv = images_tsv(self.dataset_dir, split)
        self._tsv_rows = None
        self._env = None
        if (self.lmdb_dir / "data.mdb").is_file():
            self.storage = self.lmdb_dir / "data.mdb"
            self.image_ids = self._lmdb_ids()
        elif self.tsv.is_file():
            self.storage = self.tsv
            self.image_ids = sorted(self._read_tsv())
        else:
            raise UserError(
                f"{self.dataset_dir} has no {split} split (neither {self.lmdb_dir.relative_to(self.dataset_dir).as_posix()} "
                f"nor {self.tsv.name}); "
                f"build it, or pick another --split"
            )
        self.info = self._read_info()
        self.texts = self._read_texts(split)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _open_env(self):
        import lmdb

        if self._env is None:
            self._env = lmdb.open(str(self.lmdb_dir), readonly=True, create=False, lock=False, readahead=False, meminit=False)
        return self._env

    def _lmdb_ids(self):
        ids = []
        with self._open_env().begin() as txn:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key != b"num_images":
                    ids.append(_image_id(key, self.lmdb_dir))
        return sorted(ids)

    def _read_tsv(self):
        if self._tsv_rows is None:
            rows = {}
            with open(self.tsv, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.rstrip("\n")
                    if not line:
                        continue
                    try:
                        image_id, encoded = line.split("\t")
                        rows[int(image_id)] = encoded
                    except ValueError:
                        raise UserError(f"{self.tsv} line {number} is not 'image_id<TAB>base64'") from None
            self._tsv_rows = rows
        return self._tsv_rows

    def _read_info(self):
        path = info_path(self.dataset_dir)
        if not path.is_file():
            return None
        # bounded in size and depth, one line for any problem
        return check_info(read_dataset_info(path, "rebuild the dataset"), path)

    def _read_texts(self, split):
        return read_split_texts(texts_jsonl(self.dataset_dir, split))

    @property
    def framing(self):
        """How the stored pictures were framed (dataset_format.FRAMINGS; "as-is" without an info file)."""
        return dataset_framing(self.info)

    def _info_entry(self, image_id):
        entry = (self.info or {}).get("images", {}).get(str(image_id))
        return entry if isinstance(entry, dict) else None

    def encoded(self, image_id):
        """The stored urlsafe-base64 PNG of ``image_id``."""
        if self._tsv_rows is not None or self.storage == self.tsv:
            return self._read_tsv()[image_id]
        with self._open_env().begin() as txn:
            value = txn.get(str(image_id).encode("utf-8"))
        if value is None:
            raise UserError(f"picture {image_id} is not in {self.lmdb_dir}")
        return value.decode("utf-8", errors="ignore")

    def picture(self, image_id):
        """``image_id`` as an RGB PIL picture, opened like every picture (images.open_picture)."""
        from cn_clip_pokemon.images import open_picture

        encoded = self.encoded(image_id)
        try:
            data = base64.urlsafe_b64decode(encoded)
        except (ValueError, TypeError) as error:  # binascii.Error is a ValueError
            raise UserError(f"{self.storage}: picture {image_id} is not base64 ({error}); {_REBUILD}") from None
        buffer = io.BytesIO(data)
        buffer.name = f"{self.storage} picture {image_id}"  # how a PictureError names it
        return open_picture(buffer)

    def pictures(self):
        for image_id in self.image_ids:
            yield self.picture(image_id)

    def label(self, image_id):
        """The Pokemon name of a picture (dataset_info.json) or its captions, else the texts paired with it."""
        entry = self._info_entry(image_id)
        if entry is not None:
            return " / ".join(entry["captions"]) if entry.get("captions") else entry.get("name")
        texts = [entry["text"] for entry in self.texts if image_id in entry.get("image_ids", [])]
        return " / ".join(texts) if texts else None

    def source(self, image_id):
        """The picture file ``image_id`` was built from, relative to the builder's --images folder
        (or as the --manifest named it), from dataset_info.json; None without that file."""
        entry = self._info_entry(image_id)
        source = entry.get("source") if entry is not None else None
        return source if isinstance(source, str) and source else None

    def close(self):
        if self._env is not None:
            self._env.close()
            self._env = None


# --------------------------------------------------------------------------- files a user may have edited
# The builder writes these files, but a user (or a script) may edit them: each is checked once, here,
# so a wrong kind of value is one line naming the file and the key, never a traceback further on.

_REBUILD = "the dataset was edited or damaged: rebuild it with `cn-clip-pokemon build-dataset`"


def _image_id(key, where):
    """An LMDB picture key (bytes of a whole number) as an int; a one-line UserError otherwise."""
    try:
        return int(bytes(key).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{where}: key {bytes(key)[:40]!r} is not a picture id (a whole number); {_REBUILD}") from None


def _is_whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_info(info, path):
    """``info`` (a parsed dataset_info.json) if it has the builder's shape where readers look:
    an object; ``names`` and ``templates`` lists of texts; ``images`` an object of picture ids, each
    an object whose ``name``, ``captions``, ``source`` and ``number`` are of their kinds."""
    if not isinstance(info, dict):
        raise UserError(f"{path} holds a JSON {type(info).__name__}, not an object; {_REBUILD}")
    for key in ("names", "templates"):
        if info.get(key) is not None and not _strings(info[key]):
            raise UserError(f"{path}: {key!r} is not a list of texts; {_REBUILD}")
    images = info.get("images")
    if images is None:
        return info
    if not isinstance(images, dict):
        raise UserError(f"{path}: 'images' is a JSON {type(images).__name__}, not an object of picture ids; {_REBUILD}")
    kinds = {"name": (str,), "source": (str,), "captions": (list,), "number": (int,)}
    for image_id, entry in images.items():
        where = f"{path}: images[{image_id!r}]"
        if not image_id.lstrip("-").isdigit():
            raise UserError(f"{where}: the key is not a picture id (a whole number); {_REBUILD}")
        if not isinstance(entry, dict):
            raise UserError(f"{where} is a JSON {type(entry).__name__}, not an object; {_REBUILD}")
        for key, kind in kinds.items():
            value = entry.get(key)
            if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
                raise UserError(f"{where}: {key!r} is {json.dumps(value, ensure_ascii=False)[:60]}, not a {'list of texts' if key == 'captions' else kind[0].__name__.replace('str', 'text').replace('int', 'whole number')}; {_REBUILD}")
        if entry.get("captions") is not None and not _strings(entry["captions"]):
            raise UserError(f"{where}: 'captions' is not a list of texts; {_REBUILD}")
    return info


def read_split_texts(path):
    """The entries of a ``{split}_texts.jsonl`` (``[]`` when there is none), each checked by
    :func:`check_text_entry`; a line that is not JSON is one line naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    texts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                except (ValueError, RecursionError):
                    raise UserError(f"{path} line {number} is not JSON; {_REBUILD}") from None
                texts.append(check_text_entry(entry, path, number))
    return texts


def check_text_entry(entry, path, number):
    """One line of ``{split}_texts.jsonl`` if it is upstream's ``{"text_id", "text", "image_ids"}``."""
    where = f"{path} line {number}"
    if not isinstance(entry, dict):
        raise UserError(f"{where} is a JSON {type(entry).__name__}, not an object with text_id, text and image_ids; {_REBUILD}")
    if not isinstance(entry.get("text"), str):
        raise UserError(f"{where}: 'text' is missing or not a text; {_REBUILD}")
    if not (_is_whole(entry.get("text_id")) or isinstance(entry.get("text_id"), str)):
        raise UserError(f"{where}: 'text_id' is missing or not an id; {_REBUILD}")
    ids = entry.get("image_ids")
    if not (isinstance(ids, list) and all(_is_whole(image_id) for image_id in ids)):
        raise UserError(f"{where}: 'image_ids' is not a list of picture ids (whole numbers); {_REBUILD}")
    return entry


def check_lmdb_pictures(lmdb_split_dir, pairs):
    """A one-line UserError unless an LMDB split's ``imgs`` holds what upstream's LMDBDataset will read
    for ``pairs`` (``((image_id, text), ...)``, as ``dataset_format.read_pairs`` gives them): a whole
    number under ``num_images``, and for every picture a pair names, base64 of a picture Pillow
    identifies (its header; the pixels are decoded when training reads it)."""
    import lmdb

    imgs = lmdb_images(lmdb_split_dir)
    env = lmdb.open(str(imgs), readonly=True, create=False, lock=False, readahead=False)
    try:
        with env.begin(buffers=True) as txn:
            count = txn.get(b"num_images")
            if count is None or not bytes(count).strip().isdigit():
                shown = "missing" if count is None else repr(bytes(count)[:40])
                raise UserError(f"{imgs}: num_images is {shown}, not a whole number; {_REBUILD}")
            for image_id in sorted({image_id for image_id, _text in pairs}, key=str):
                value = txn.get(str(image_id).encode("utf-8"))
                where = f"{imgs}: picture {image_id}"
                if value is None:
                    raise UserError(f"{where}, which a pair in {lmdb_pairs(lmdb_split_dir)} names, is not there; {_REBUILD}")
                _check_encoded_picture(value, where)
    finally:
        env.close()


def _check_encoded_picture(value, where):
    """A one-line UserError unless ``value`` is urlsafe base64 of a picture Pillow can identify; most
    are told from their first 3 KB, the rest are decoded whole."""
    from PIL import Image

    def identified(data):
        try:
            with Image.open(io.BytesIO(data)):
                return True
        except Exception:  # not a picture, or its header is longer than the piece read
            return False

    head = bytes(value[:4096])
    try:
        if identified(base64.urlsafe_b64decode(head[: len(head) // 4 * 4])):
            return
    except ValueError:
        pass  # judged on the whole value below
    try:
        data = base64.urlsafe_b64decode(bytes(value))
    except ValueError as error:  # binascii.Error
        raise UserError(f"{where} is not base64 ({error}); {_REBUILD}") from None
    if not identified(data):
        raise UserError(f"{where} is not a picture Pillow can read; {_REBUILD}")
