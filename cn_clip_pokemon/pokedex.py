"""Pokemon names: number <-> simplified Chinese name, picture-name parsing, and the `t2s` command.

The canonical name of a Pokemon is its official Simplified Chinese name, the one the games use:
``data/official-names.tsv``, made from PokeAPI's data (its header records the source commit, the
licence and how it was made), which also gives the official Traditional Chinese, English and
Japanese names. The older translations of npm ``pokemon@3.3.1`` (``data/npm-pokemon-names.json``,
zh-hans and zh-hant, MIT, Sindre Sorhus), which this package used before, stay as aliases: any of
these names finds its Pokemon (:meth:`Pokedex.lookup`), and every name we hand out is the official
one. Names are compared after NFKC and OpenCC's t2s, so a traditional character, a full-width
letter, a space or a letter's case never decides a match.
"""
import functools
import io
import json
import os
import re
import shutil
import stat
import unicodedata
from pathlib import Path

from cn_clip_pokemon.dataset_format import fill_template
from cn_clip_pokemon.errors import UserError
from cn_clip_pokemon.files import atomic_write, staged_folder
from cn_clip_pokemon.safe_reading import JSON_STRING, is_utf8, mode_name, open_regular, parse_json, read_limited

DATA_DIR = Path(__file__).parent / "data"
OFFICIAL_NAMES_FILE = DATA_DIR / "official-names.tsv"  # number, zh_hans, zh_hant, en, ja
NPM_NAMES_FILE = DATA_DIR / "npm-pokemon-names.json"  # the older names, kept as aliases
# The columns of official-names.tsv after the number: the canonical name, then the other languages.
OFFICIAL_COLUMNS = ("zh_hans", "zh_hant", "en", "ja")

# A picture name is "<number><separator><name><view>" with each part optional:
# 0001妙蛙种子.png, 1妙蛙种子.png, 0025-皮卡丘.jpg, 025_皮卡丘.webp, 皮卡丘.png, 0025皮卡丘_2.png.
_LEADING_NUMBER = re.compile(r"^#?(\d+)")
_SEPARATORS = " \t_-.#"
# What may follow a name as a view label: "_2", " (2)", "-back", "2"; tried only when the whole
# remainder is not a name, so names with digits, letters or separators (多边兽2型, Mr. Mime, Ho-Oh)
# still match first, and then the longest name before a separator wins ("Mr. Mime_back").
_VIEW_SEPARATOR = re.compile(r"[\s_\-.]+")
_VIEW_SUFFIX = re.compile(r"^(?P<name>.+?)(?:[(（](?P<paren>[^)）]*)[)）]|(?P<digits>\d+))$")
# Characters a name may be written with or without: spaces and the middle dots of 卡璞・鸣鸣.
_IGNORED_IN_NAMES = str.maketrans("", "", " ·・")


_SURROGATES = re.compile("([\ud800-\udfff]+)")


@functools.lru_cache(maxsize=1)
def _t2s_converter():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text):
    """Traditional -> simplified Chinese with OpenCC (t2s); other characters pass through."""
    if not text or text.isascii():
        return text
    try:
        return _t2s_converter().convert(text)
    except UnicodeEncodeError:
        # A file name that is not valid UTF-8 holds lone surrogates, which OpenCC cannot take:
        # convert the text between them and keep them as they are.
        return "".join(part if _SURROGATES.fullmatch(part) else _t2s_converter().convert(part)
                       for part in _SURROGATES.split(text) if part)


def _lookup_key(name):
    """What two spellings of one name have in common: NFKC (full-width ２ -> 2), simplified, lower
    case, without spaces or middle dots, ’ as ', and Latin letters without accents (Flabébé)."""
    name = unicodedata.normalize("NFKC", name).replace("\u2019", "'")
    key = to_simplified(name).translate(_IGNORED_IN_NAMES).lower()
    if not key.isascii():
        unaccented = "".join(char for char in unicodedata.normalize("NFKD", key) if not unicodedata.combining(char))
        if unaccented.isascii():  # only for Latin script: kana keep their dakuten
            key = unaccented
    return key


def _has_cjk(text):
    return any(unicodedata.category(char) == "Lo" for char in text)


class Pokedex:
    """The 1025 Pokemon: ``name(number)`` (official, simplified), ``number(name)``, ``lookup(text)``.

    ``entries``: dicts with ``number``, ``zh_hans`` (the canonical name), and optionally
    ``zh_hant`` and ``aliases`` (other names that find the same Pokemon).
    """

    def __init__(self, entries, source=""):
        self.source = source
        self._names = {}
        self._traditional = {}
        self._aliases = {}
        self._numbers = {}
        canonical_keys, alias_keys = {}, {}
        for entry in entries:
            number = int(entry["number"])
            canonical = to_simplified(unicodedata.normalize("NFC", entry["zh_hans"]))
            self._names[number] = canonical
            self._traditional[number] = entry.get("zh_hant", "")
            canonical_keys[number] = _lookup_key(canonical)
            keys = {}  # each name's lookup key, computed once
            for alias in (entry["zh_hans"], entry.get("zh_hant", ""), *entry.get("aliases", ())):
                if alias and alias not in keys:
                    keys[alias] = _lookup_key(alias)
            alias_keys[number] = {alias: key for alias, key in keys.items() if key != canonical_keys[number]}
            self._aliases[number] = list(alias_keys[number])
        # Canonical names first so they win over any alias that happens to collide with one.
        for number, key in canonical_keys.items():
            self._numbers[key] = number
        for number, keys in alias_keys.items():
            for key in keys.values():
                self._numbers.setdefault(key, number)

    @classmethod
    @functools.lru_cache(maxsize=2)
    def load(cls, path=None):
        """The shipped Pokedex (cached): official names, with the older npm names as aliases.

        ``path`` reads another table in the format of ``data/official-names.tsv`` instead (no npm aliases).
        """
        entries = read_official_names(OFFICIAL_NAMES_FILE if path is None else path)
        source = f"{Path(path).name if path is not None else OFFICIAL_NAMES_FILE.name} (official names)"
        if path is None:
            with open(NPM_NAMES_FILE, encoding="utf-8") as file:
                npm = json.load(file)
            older = {int(entry["number"]): entry for entry in npm["pokemon"]}
            for entry in entries:
                old = older.get(entry["number"], {})
                entry["aliases"] += [old.get("zh_hans", ""), old.get("zh_hant", "")]
            source += f"; aliases: {npm['source']}"
        return cls(entries, source=source)

    def __len__(self):
        return len(self._names)

    def __contains__(self, number):
        return number in self._names

    def name(self, number):
        """The official simplified Chinese name of Pokemon ``number``; KeyError for an unknown number."""
        try:
            return self._names[int(number)]
        except KeyError:
            raise KeyError(f"#{number} is not in the Pokedex (1-{max(self._names)})") from None

    def traditional_name(self, number):
        return self._traditional[int(number)]

    def aliases(self, number):
        """The other names of Pokemon ``number`` that find it (other languages, older translations)."""
        return list(self._aliases[int(number)])

    def number(self, name):
        """The number of any known name of a Pokemon (see :meth:`lookup`); None if unknown."""
        return self._numbers.get(_lookup_key(name))

    def lookup(self, text):
        """``(official name, number)`` for any name of a Pokemon: the official simplified name,
        the official traditional, English or Japanese one, or an older translation (npm
        ``pokemon@3.3.1``), in traditional or simplified characters. Any other text comes back
        simplified, with number None (a description, or a caption that is no Pokemon)."""
        text = unicodedata.normalize("NFC", text).strip()
        number = self.number(text)
        if number is None:
            return to_simplified(text), None
        return self._names[number], number

    def names(self):
        """Every official simplified name, in number order."""
        return [self._names[number] for number in sorted(self._names)]

    def numbers(self):
        return sorted(self._names)

    def parse_picture_name(self, file_name, is_folder=False):
        """``(number, name, view)`` from a picture's file (or, with ``is_folder``, folder) name.

        ``view`` is whatever follows the name ("2" in ``0025皮卡丘_2.png``), "" when nothing does.
        Raises ValueError; its message says what is wrong, without the file's path (callers add it).
        """
        stem = unicodedata.normalize("NFC", file_name if is_folder else Path(file_name).stem)
        stem = stem.strip()
        match = _LEADING_NUMBER.match(stem)
        if not match:
            return self._parse_name_only(stem)
        digits = match.group(1)
        after = stem[match.end():]
        # The leading digits may run into a name that starts with one ("02333D龙II"): try the
        # longest number first, then give digits back to the name (only when that gives a name).
        for cut in range(len(digits), 0, -1):
            number = int(digits[:cut])
            rest = (digits[cut:] + after).lstrip(_SEPARATORS)
            name_number, view = self._find_name(rest) if rest else (number, "")
            if name_number is None:
                continue
            if number not in self._names:
                if cut < len(digits):
                    continue
                raise ValueError(f"number {number} is not in the Pokedex (1-{max(self._names)})")
            if name_number != number:
                raise ValueError(
                    f"the number says #{number} {self._names[number]} but the name says "
                    f"{rest!r} (#{name_number} {self._names[name_number]}); rename the file"
                )
            return number, self._names[number], view
        number = int(digits)
        rest = after.lstrip(_SEPARATORS)
        if number not in self._names:
            raise ValueError(f"number {number} is not in the Pokedex (1-{max(self._names)})")
        if _has_cjk(rest):
            raise ValueError(
                f"the number says #{number} {self._names[number]} but {rest!r} is no Pokemon name; "
                "fix the spelling or rename the file"
            )
        # A number followed by a label that is not a name: a view ("0025_back", "0025_front_00").
        return number, self._names[number], rest

    def _parse_name_only(self, text):
        name_number, view = self._find_name(text)
        if name_number is None:
            raise ValueError(f"no Pokemon number or known name in {text!r}")
        return name_number, self._names[name_number], view

    def _find_name(self, text):
        """``(number, view)`` for "name" or "name<suffix>", ``(None, "")`` when no name is there."""
        number = self.number(text)
        if number is not None:
            return number, ""
        # "name<separator>label": the longest name first ("Mr. Mime_back" is Mr. Mime, not Mr).
        for separator in reversed(list(_VIEW_SEPARATOR.finditer(text))):
            name, label = text[:separator.start()], text[separator.end():]
            number = self.number(name) if name and label else None
            if number is not None:
                return number, label.strip(" ()（）")
        match = _VIEW_SUFFIX.match(text)
        if match:
            number = self.number(match.group("name"))
            if number is not None:
                return number, (match.group("paren") or match.group("digits") or "").strip()
        return None, ""

    def tokenizer_report(self, names=None, templates=None, context_length=52):
        """Check names against Chinese-CLIP's fixed BERT vocabulary.

        Returns ``{"unknown": {name: [tokens]}, "identical": [[names that tokenize the same]],
        "longest_tokens": n, "texts_over_context_length": count}``.
        A name with [UNK] still trains, but only on its other characters; names in one "identical"
        group can never be told apart by the model. ``templates`` checks the filled prompts too.
        Lengths count upstream's [CLS] and [SEP]; a text over ``context_length`` (upstream's default
        52) is cut when it is tokenized for training.
        """
        _tokenizer = cn_clip_tokenizer()
        names = self.names() if names is None else list(names)
        templates = templates or ["{}"]
        unknown = {}
        by_tokens = {}
        longest, over = 0, 0
        for name in names:
            # Upstream lower-cases texts before tokenizing (cn_clip.training.data._preprocess_text).
            tokens = _tokenizer.tokenize(name.lower())
            if "[UNK]" in tokens:
                unknown[name] = tokens
            key = tuple(
                tuple(_tokenizer.convert_tokens_to_ids(_tokenizer.tokenize(fill_template(t, name).lower())))
                for t in templates
            )
            by_tokens.setdefault(key, []).append(name)
            for ids in key:
                length = len(ids) + 2  # [CLS] ... [SEP]
                longest = max(longest, length)
                over += length > context_length
        identical = [group for group in by_tokens.values() if len(group) > 1]
        return {"unknown": unknown, "identical": identical, "longest_tokens": longest, "texts_over_context_length": over}


def read_official_names(path):
    """The rows of a table like ``data/official-names.tsv`` as Pokedex entries.

    Lines starting with # are its header; the first other line names the columns: number, zh_hans,
    and any of zh_hant, en, ja (names in the other columns become aliases).
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the names table {path}: {error}; reinstall cn-clip-pokemon") from None
    columns = lines[0].split("\t") if lines else []
    if columns[:2] != ["number", "zh_hans"]:
        raise UserError(f"{path}: the first line after the # header must name the columns number, zh_hans, ...")
    entries = []
    for line_number, line in enumerate(lines[1:], 2):
        row = dict(zip(columns, line.split("\t")))
        if not row.get("number", "").isdigit() or not row.get("zh_hans"):
            raise UserError(f"{path}: row {line_number} ({line[:40]!r}) has no number or no zh_hans name")
        entries.append({
            "number": int(row["number"]),
            "zh_hans": row["zh_hans"],
            "zh_hant": row.get("zh_hant", ""),
            "aliases": [row[column] for column in columns[2:] if column != "zh_hant" and row.get(column)],
        })
    return entries


def lookup_name(text):
    """``(official name, number)`` for a name someone typed (number None when it is no Pokemon's
    name): the one lookup `classify --names`, `search` and the page use. See :meth:`Pokedex.lookup`."""
    return Pokedex.load().lookup(text)


@functools.lru_cache(maxsize=1)
def cn_clip_tokenizer():
    """Upstream's own tokenizer (``cn_clip.clip._tokenizer``, BERT vocab of 21128).

    Importing ``cn_clip.clip`` pulls in torch (seconds); when it is not imported yet, upstream's
    ``bert_tokenizer.py`` is loaded on its own from the installed package, which needs no torch.
    """
    import importlib.util
    import sys

    if "cn_clip.clip" in sys.modules:
        return sys.modules["cn_clip.clip"]._tokenizer
    package = importlib.util.find_spec("cn_clip")
    if package is None or not package.submodule_search_locations:
        raise UserError("cn_clip is not installed: pip install cn_clip==1.6.0")
    path = Path(list(package.submodule_search_locations)[0]) / "clip" / "bert_tokenizer.py"
    spec = importlib.util.spec_from_file_location("cn_clip_pokemon._cn_clip_bert_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FullTokenizer()


# ---------------------------------------------------------------- the `t2s` command

TEXT_SUFFIXES = {".tsv", ".jsonl", ".json", ".txt", ".csv"}


MAX_LINE = 64 << 20  # characters in one line of a text file to convert
JSON_FILE_LIMIT = 1 << 30  # a .json file is checked whole before it is converted
T2S_JSON_DEPTH = 500  # nesting a JSON text to convert may have (Python's own parser stops near 1000)


class _KeysBecomeOne(ValueError):
    """Two keys of one JSON object that t2s would turn into the same key."""

    def __init__(self, first, second, simplified):
        super().__init__(f'the keys "{first}" and "{second}" of one object would both become "{simplified}"')


def _keys_stay_distinct(pairs):
    """``object_pairs_hook`` for checking a JSON text before converting it: two keys that become one
    (臺灣 and 台湾) would lose a value, so they are refused. Returns nothing: the text is converted
    as it is written, never rebuilt from what Python parsed."""
    seen = {}
    for key, _ in pairs:
        simplified = to_simplified(key)
        if seen.setdefault(simplified, key) != key:
            raise _KeysBecomeOne(seen[simplified], key, simplified)
    return None


def _check_json(text):
    """ValueError (with a ``msg``-less text) unless ``text`` is JSON that t2s can convert safely."""
    parse_json(text, max_depth=T2S_JSON_DEPTH, object_pairs_hook=_keys_stay_distinct)


def _convert_json_strings(text):
    """``text`` (checked JSON, or one line of it) with each string literal converted and every other
    character as it was: numbers such as 1e400, spacing, key order and repeated keys stay as written."""

    def convert(match):
        literal = match.group(0)
        if literal.isascii() and "\\u" not in literal:
            return literal
        value = json.loads(literal)
        simplified = to_simplified(value)
        if simplified == value:
            return literal
        # a lone surrogate (from a "\\ud800" escape) cannot be written as UTF-8: keep it escaped
        return json.dumps(simplified, ensure_ascii=not is_utf8(simplified))

    return JSON_STRING.sub(convert, text)


def _convert_line(line, kind):
    """One line of a TSV, JSON(L) or plain-text file, converted; base64 and ASCII pass untouched.

    A JSONL line is checked first (ValueError: not JSON, nested too deep, two keys becoming one); a
    .json file's lines were checked as one document before.
    """
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    if body.isascii() and not (kind in ("jsonl", "json") and "\\u" in body):
        return line
    if kind in ("jsonl", "json"):
        if kind == "jsonl" and body.strip():
            _check_json(body)
        return _convert_json_strings(body) + ending
    if kind == "tsv":
        return "\t".join(to_simplified(field) for field in body.split("\t")) + ending
    return to_simplified(body) + ending


def _lines(reader, source):
    """The lines of ``reader``, each of at most MAX_LINE characters (a UserError otherwise)."""
    while True:
        line = reader.readline(MAX_LINE + 1)
        if not line:
            return
        if len(line) > MAX_LINE:
            raise UserError(f"{source}: a line longer than {MAX_LINE:,} characters; this is not a text file t2s "
                            "converts; nothing was changed")
        yield line


def convert_text_file(source, destination):
    """Write ``source`` converted to ``destination`` (may be the same path); returns changed lines.

    The result is a list of ``(line_number, old, new)``; the write is atomic (temp file + rename),
    and converting a symlink in place converts the file it points to (the link stays a link).
    JSON is converted string by string, never rebuilt, after a check (UserError) that it is JSON
    whose keys stay distinct.
    """
    source, destination = Path(source), Path(destination)
    kind = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}.get(source.suffix.lower(), "text")
    in_place = os.path.abspath(source) == os.path.abspath(destination)
    if in_place:
        destination = Path(os.path.realpath(source))  # replacing a link would leave its target as it was
    changes = []
    keep_mode = destination.stat().st_mode if in_place else None
    if kind == "json":
        text = read_limited(source, JSON_FILE_LIMIT, "a JSON file to convert").decode("utf-8")
        try:
            _check_json(text)
        except ValueError as error:
            raise UserError(f"{source} is not JSON t2s can convert ({getattr(error, 'msg', None) or error}); "
                            "nothing was changed; fix it first") from None
        reader = io.StringIO(text, newline="")
    else:
        reader = io.TextIOWrapper(open_regular(source), encoding="utf-8", newline="")
    with reader, atomic_write(destination, "w", encoding="utf-8", newline="") as writer:
        for line_number, line in enumerate(_lines(reader, source), 1):
            try:
                converted = _convert_line(line, kind)
            except ValueError as error:
                raise UserError(f"{source}:{line_number}: not a JSON line t2s can convert "
                                f"({getattr(error, 'msg', None) or error}); nothing was changed; fix or remove it") from None
            if converted != line:
                changes.append((line_number, line.rstrip("\r\n"), converted.rstrip("\r\n")))
            writer.write(converted)
    if keep_mode is not None:
        os.chmod(destination, keep_mode)
    return changes


def plan_renames(folder):
    """``[(old_relative, new_relative)]`` for every file/folder under ``folder`` whose name changes.

    Deepest entries first, so renaming in that order never moves a parent before its children.
    Raises UserError when two names would become one.
    """
    folder = Path(folder)
    plan = []
    for directory, subdirs, files in os.walk(folder, topdown=False):
        directory = Path(directory)
        siblings = set(subdirs + files)
        targets = {}
        for entry in sorted(siblings):
            new = to_simplified(unicodedata.normalize("NFC", entry))
            if new == entry:
                continue
            if new in siblings or new in targets:
                other = new if new in siblings else targets[new]
                raise UserError(
                    f"{directory / entry} would become {directory / new}, a name {directory / other} "
                    "already has or gets; rename one of them first"
                )
            targets[new] = entry
            plan.append(((directory / entry).relative_to(folder), (directory / new).relative_to(folder)))
    return plan


def t2s_arguments(parser):
    parser.description = (
        "Convert traditional Chinese to simplified (OpenCC t2s): the file and folder names under a "
        "folder, or the text of a .tsv, .jsonl or text file. Without --in-place a converted copy is "
        "written (--out, or NAME_simplified beside the input) and the input is left as it is. "
        "Every change is listed."
    )
    parser.add_argument("path", type=Path, help="a folder of pictures, or a .tsv/.jsonl/text file")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--in-place", action="store_true", help="change the input itself")
    where.add_argument("--out", type=Path, help="where the converted copy goes (must not exist)")
    parser.add_argument("--quiet", action="store_true", help="print only the count of changes")


def _default_copy_path(path):
    if path.is_dir():
        return path.with_name(path.name + "_simplified")
    return path.with_name(path.stem + "_simplified" + path.suffix)


def t2s_command(args):
    path = args.path
    if not path.exists():
        raise UserError(f"{path} does not exist; give a folder of pictures or a .tsv/.jsonl/text file")
    out = path if args.in_place else (args.out or _default_copy_path(path))
    if not args.in_place and out.exists():
        raise UserError(f"{out} already exists; remove it, choose another --out, or use --in-place")

    if not path.is_file() and not path.is_dir():
        raise UserError(f"{path} is a {mode_name(path.stat().st_mode)}, not a file or a folder; nothing was changed")
    if path.is_file():
        try:
            changes = convert_text_file(path, out)
        except OSError as error:
            raise UserError(f"cannot convert {path} ({error.strerror or error}); nothing was changed") from None
        except UnicodeDecodeError:
            # the temporary copy is gone and the input untouched (convert_text_file writes atomically)
            raise UserError(
                f"{path} is not UTF-8 text (GBK or Big5 perhaps): nothing was changed; convert it to "
                f"UTF-8 first, e.g. `iconv -f GBK -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`"
            ) from None
        for line_number, old, new in changes if not args.quiet else []:
            print(f"{path.name}:{line_number}: {_shorten(old)} -> {_shorten(new)}")
        print(f"{len(changes)} line(s) changed; written to {out}")
        return 0

    if args.in_place:
        plan = plan_renames(path)
        for old, new in plan:
            os.rename(path / old, path / new)
    else:
        # Copy under a temporary name beside the target, convert the copy, then rename it into place
        # (with the input folder's permissions, as a copy has).
        with staged_folder(out, prefix=f".{out.name}.", mode=stat.S_IMODE(path.stat().st_mode)) as temp:
            shutil.copytree(path, temp, dirs_exist_ok=True)
            plan = plan_renames(temp)
            for old, new in plan:
                os.rename(temp / old, temp / new)
    for old, new in plan if not args.quiet else []:
        print(f"{old} -> {new}")
    print(f"{len(plan)} name(s) changed; result in {out}")
    return 0


def _shorten(text, limit=120):
    return text if len(text) <= limit else text[:limit] + "..."
