"""The dataset format's rules, in one place every stage imports: splits, the folder layout (the info
file, each split's LMDB, TSV and JSONL, and from a split folder back to its dataset), reading the
info, prompt templates, and reading upstream's pickled LMDB pairs without running code. No other
module spells a file or folder name of a dataset.

Templates: a template holds exactly one ``{}`` where the name goes and no other brace, and it is
filled by replacing that ``{}``. Building, the tokenizer report, classify and evaluate all go through
:func:`check_template` and :func:`fill_template`, so a template can never mean one text when training
and another when classifying (``{{}}`` once gave ``{皮卡丘}`` to the builder's replace and a bare ``{}``
to classify's ``str.format``; any brace but the one ``{}`` is now refused everywhere).

Pairs: upstream stores each LMDB pair as ``pickle.dumps((image_id, text_id, text))``. A pickle can
call any importable function while it loads, so a dataset from elsewhere could run code when it is
opened. :func:`safe_pair_loads` refuses every opcode but those of plain values and unpickles with an
unpickler that imports nothing: only tuples, lists, numbers, strings, bytes and None can come out,
and the value must then be an upstream pair.
"""
import functools
import io
import pickle

from cn_clip_pokemon.errors import UserError

SPLITS = ("train", "valid", "test")
EVAL_SPLIT = "test"  # the split evaluate, search, serve and classify read unless told another
INFO_FILE = "dataset_info.json"
LMDB_FOLDER = "lmdb"  # DATASET/lmdb/SPLIT holds each split's LMDB (upstream's layout)
LMDB_DATABASES = ("imgs", "pairs")  # the two LMDB databases of a split folder (upstream's names)
INFO_LIMIT = 4 << 30  # a dataset_info.json of ten million pictures is about 2 GiB
_REBUILD_INFO = "rebuild the dataset with `cn-clip-pokemon build-dataset`"
# A checkpoint's entry (next to "model_config") naming the candidate captions of its training set.
CAPTIONS_KEY = "captions"
# How a dataset's pictures were framed before they were padded square (dataset_info.json "framing",
# and a checkpoint's entry of that name): "as-is", each picture's own frame on white; "subject", each
# cropped to its subject on white (images.frame_subject). Every door frames a picture as its
# checkpoint's training set was framed.
FRAMING_KEY = "framing"
FRAMINGS = ("as-is", "subject")

PLACEHOLDER = "{}"
TEMPLATE_EXAMPLE = "一张{}的图片"


# --------------------------------------------------------------------------- the folder layout
# DATASET/
#   dataset_info.json       info_path(DATASET)
#   lmdb/SPLIT/             lmdb_dir(DATASET, SPLIT), upstream's LMDB of one split:
#     imgs/                   lmdb_images(SPLIT_DIR), image_id -> base64 picture
#     pairs/                  lmdb_pairs(SPLIT_DIR), index -> pickled (image_id, text_id, text)
#   SPLIT_imgs.tsv          images_tsv(DATASET, SPLIT), upstream's base64 pictures
#   SPLIT_texts.jsonl       texts_jsonl(DATASET, SPLIT), upstream's texts with their image ids


def info_path(dataset_dir):
    """DATASET/dataset_info.json (it may not exist)."""
    from pathlib import Path

    return Path(dataset_dir) / INFO_FILE


def lmdb_dir(dataset_dir, split):
    """DATASET/lmdb/SPLIT, the LMDB folder of one split (it may not exist)."""
    from pathlib import Path

    return Path(dataset_dir) / LMDB_FOLDER / split


def lmdb_images(lmdb_split_dir):
    """DATASET/lmdb/SPLIT/imgs, the pictures' LMDB of one split (it may not exist)."""
    from pathlib import Path

    return Path(lmdb_split_dir) / LMDB_DATABASES[0]


def lmdb_pairs(lmdb_split_dir):
    """DATASET/lmdb/SPLIT/pairs, the image-text pairs' LMDB of one split (it may not exist)."""
    from pathlib import Path

    return Path(lmdb_split_dir) / LMDB_DATABASES[1]


def images_tsv(dataset_dir, split):
    """DATASET/SPLIT_imgs.tsv, upstream's pictures of one split (it may not exist)."""
    from pathlib import Path

    return Path(dataset_dir) / f"{split}_imgs.tsv"


def texts_jsonl(dataset_dir, split):
    """DATASET/SPLIT_texts.jsonl, upstream's texts of one split (it may not exist)."""
    from pathlib import Path

    return Path(dataset_dir) / f"{split}_texts.jsonl"


def dataset_of_split(lmdb_split_dir):
    """DATASET for DATASET/lmdb/SPLIT (the folder two levels up, resolved)."""
    from pathlib import Path

    return Path(lmdb_split_dir).resolve().parent.parent


def demo_pictures(dataset_dir):
    """WORKDIR/pictures for WORKDIR/datasets/NAME: where the demo's layout keeps the pictures its
    datasets are built from (it may not exist)."""
    from pathlib import Path

    return Path(dataset_dir).resolve().parent.parent / "pictures"


# --------------------------------------------------------------------------- the info file


def info_path_of_split(lmdb_split_dir):
    """DATASET/dataset_info.json for DATASET/lmdb/SPLIT (it may not exist)."""
    return info_path(dataset_of_split(lmdb_split_dir))


def read_dataset_info(path_or_dataset_dir, advice=_REBUILD_INFO):
    """The parsed dataset_info.json at ``path_or_dataset_dir`` (the file, or the dataset folder
    holding it): bounded in size and depth (safe_reading.py's rule for files we did not write), a one-line
    UserError ending in ``advice`` when it cannot be read or is not JSON.

    Remembered while the file is unchanged (path, modification time, size), so the launcher, the
    dataset plugin at every epoch and the demo's steps parse it once. Callers share the value: they
    must not change it."""
    import os
    from pathlib import Path

    from cn_clip_pokemon.safe_reading import load_json_file

    path = Path(path_or_dataset_dir)
    if path.is_dir():
        path = path / INFO_FILE
    try:
        found = os.stat(path)
        key = (str(path), found.st_mtime_ns, found.st_size)
    except OSError:
        key = None  # load_json_file says why it cannot be read
    if key in _INFO_CACHE:
        return _INFO_CACHE[key]
    info = load_json_file(path, INFO_LIMIT, f"a {INFO_FILE}", advice)
    if key is not None:
        if len(_INFO_CACHE) >= _INFO_CACHE_SIZE:
            _INFO_CACHE.pop(next(iter(_INFO_CACHE)))
        _INFO_CACHE[key] = info
    return info


_INFO_CACHE = {}  # (path, st_mtime_ns, st_size) -> the parsed dataset_info.json
_INFO_CACHE_SIZE = 4


def load_dataset_info(dataset_dir):
    """The ``dataset_info.json`` of a built dataset, with a clear error when it is not one."""
    path = info_path(dataset_dir)
    if not path.is_file():
        raise UserError(f"{dataset_dir} has no {INFO_FILE}: build it with `cn-clip-pokemon build-dataset`")
    return read_dataset_info(path)


def check_framing(framing):
    """``framing`` if it is one of FRAMINGS, else a one-line UserError naming them."""
    if framing not in FRAMINGS:
        raise UserError(f"unknown framing {framing!r}: choose from {', '.join(FRAMINGS)}")
    return framing


def dataset_framing(info):
    """The framing a dataset's info (a dict, or None for a dataset made elsewhere) records: "as-is"
    when it records none (a dataset built before framing existed, or by upstream's scripts)."""
    framing = info.get(FRAMING_KEY, "as-is") if isinstance(info, dict) else "as-is"
    return framing if framing in FRAMINGS else "as-is"


def _training_info(train_data):
    """DATASET/dataset_info.json of ``train_data`` (DATASET/lmdb/train) as a dict, or None without a
    readable one (a dataset made by upstream's own scripts): what a checkpoint records of its training set."""
    if not train_data:
        return None
    path = info_path_of_split(train_data)
    try:
        info = read_dataset_info(path, "") if path.is_file() else None
    except (OSError, UserError):
        return None
    return info if isinstance(info, dict) else None


def training_framing(train_data):
    """The framing a checkpoint trained on ``train_data`` (DATASET/lmdb/train) records: its dataset's."""
    return dataset_framing(_training_info(train_data))


def training_captions(train_data):
    """The candidate captions a checkpoint trained on ``train_data`` (DATASET/lmdb/train) records:
    the ``names`` of DATASET/dataset_info.json, every Pokemon or caption of every split (a test split
    of unseen Pokemon is ranked among all of them). None without a readable info file, e.g. for a
    dataset made by upstream's own scripts; training then records none."""
    names = (_training_info(train_data) or {}).get("names")
    if isinstance(names, list) and names and all(isinstance(name, str) and name for name in names):
        return list(dict.fromkeys(names))
    return None


# --------------------------------------------------------------------------- prompt templates


def check_template(template):
    """``template`` if it holds exactly one ``{}`` and no other brace, else a one-line UserError."""
    if not isinstance(template, str):
        raise UserError(f"template {template!r} is not a text: use one with {{}} where the name goes, e.g. {TEMPLATE_EXAMPLE}")
    if template.count(PLACEHOLDER) != 1:
        raise UserError(f"template {template!r} must hold exactly one {{}} where the name goes, e.g. {TEMPLATE_EXAMPLE}")
    rest = template.replace(PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        raise UserError(
            f"template {template!r} has a brace besides the one {{}} for the name; templates hold no other "
            f"{{ or }}, e.g. {TEMPLATE_EXAMPLE}"
        )
    return template


def check_templates(templates):
    """The templates, each checked, duplicates dropped in order; no templates means the bare name."""
    templates = list(dict.fromkeys(templates)) if templates else [PLACEHOLDER]
    for template in templates:
        check_template(template)
    return templates


def fill_template(template, name):
    """The text of ``name`` through a checked ``template``: its one ``{}`` replaced by the name."""
    return check_template(template).replace(PLACEHOLDER, name, 1)


# --------------------------------------------------------------------------- LMDB pairs


# The opcodes a plain pair needs (tuples, lists, ints, strings, bytes, None and the memo), at any
# protocol. Everything else is refused before loading: GLOBAL/STACK_GLOBAL/INST/OBJ/REDUCE/NEWOBJ/
# BUILD would import or call, EXT1/2/4 name a global through copyreg's extension registry, whose
# cache the C unpickler consults without asking find_class, and PERSID/BINPERSID call persistent_load.
_PLAIN_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4
    STRING BINSTRING SHORT_BINSTRING UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS
    PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET""".split()
)


class _Refused(pickle.UnpicklingError):
    """A pickle asked for something a plain pair never needs (what is the message)."""


class _NothingImportingUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global: no class, no function, so nothing can be called."""

    def find_class(self, module, name):
        raise _Refused(f"global {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("a persistent id")


def _refuse_unplain_opcodes(data):
    """Raise _Refused at the first opcode a plain pair does not need."""
    import pickletools

    for opcode, argument, _position in pickletools.genops(data):
        if opcode.name not in _PLAIN_OPCODES:
            shown = f" {argument.replace(' ', '.')}" if opcode.name in ("GLOBAL", "INST") and isinstance(argument, str) else ""
            raise _Refused(f"opcode {opcode.name}{shown}")


def _plain_loads(data):
    """Unpickle ``data`` only if it is made of plain-value opcodes, with nothing importable."""
    _refuse_unplain_opcodes(data)
    return _NothingImportingUnpickler(io.BytesIO(data)).load()


def _is_id(value):
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def pair_location(pairs_dir, key):
    """How errors name one pair: the LMDB folder and the key."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key).decode("utf-8", errors="replace")
    return f"{pairs_dir} key {key!r}"


def safe_pair_loads(value, where):
    """``(image_id, text_id, text)`` from one LMDB pair value, without running any code.

    ``where`` names the LMDB path and key for the error (see :func:`pair_location`). Anything but a
    plain pickled upstream pair (a pickle that imports or calls something, a damaged value, another
    shape) raises a one-line UserError and nothing in it is executed.
    """
    if value is None:
        raise UserError(f"{where}: the pair is missing; the dataset is damaged: rebuild it with `cn-clip-pokemon build-dataset`")
    data = bytes(value)
    try:
        pair = _plain_loads(data)
    except _Refused as refused:
        raise UserError(
            f"{where}: the pair value is not a plain pickled (image_id, text_id, text): it uses {refused}, "
            "which could run code, so it was refused and not executed. This dataset is not trusted: "
            "rebuild it from the pictures with `cn-clip-pokemon build-dataset`"
        ) from None
    except Exception as error:  # truncated or garbage bytes: EOFError, ValueError, KeyError, ...
        raise UserError(
            f"{where}: the pair value is not a readable pickle ({type(error).__name__}); the dataset is "
            "damaged or not trusted: rebuild it with `cn-clip-pokemon build-dataset`"
        ) from None
    if not (
        isinstance(pair, (tuple, list))
        and len(pair) == 3
        and _is_id(pair[0])
        and _is_id(pair[1])
        and isinstance(pair[2], str)
    ):
        raise UserError(
            f"{where}: the pair value is of type {type(pair).__name__}, not upstream's (image_id, text_id, text); "
            "the dataset is not trusted: rebuild it with `cn-clip-pokemon build-dataset`"
        )
    return tuple(pair)


def read_pairs(lmdb_split_dir):
    """``((image_id, text), ...)`` of every pair of an LMDB split, in order, each read with
    :func:`safe_pair_loads`. Remembered while the pairs file is unchanged, so the launcher's check
    and the dataset plugin's grouping in the same process read the split once."""
    import os
    from pathlib import Path

    split = Path(lmdb_split_dir).resolve()
    stamp = os.stat(lmdb_pairs(split) / "data.mdb").st_mtime_ns
    return _read_pairs(str(split), stamp)


@functools.lru_cache(maxsize=4)
def _read_pairs(lmdb_split_dir, _stamp):
    import lmdb

    pairs_dir = str(lmdb_pairs(lmdb_split_dir))
    env = lmdb.open(pairs_dir, readonly=True, lock=False, readahead=False)
    try:
        with env.begin(buffers=True) as txn:
            count = txn.get(b"num_samples")
            if count is None:
                raise UserError(f"{pairs_dir} has no num_samples: not an LMDB split built for Chinese-CLIP; rebuild it")
            try:
                total = int(bytes(count).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise UserError(
                    f"{pairs_dir}: num_samples is {bytes(count)[:40]!r}, not a whole number; the dataset was edited "
                    "or damaged: rebuild it with `cn-clip-pokemon build-dataset`"
                ) from None
            pairs = []
            for index in range(total):
                key = str(index)
                image_id, _text_id, text = safe_pair_loads(txn.get(key.encode("utf-8")), pair_location(pairs_dir, key))
                pairs.append((image_id, text))
    finally:
        env.close()
    return tuple(pairs)
