"""`cn-clip-pokemon serve`: classify and search on a web page (Gradio, the optional ``web`` extra).

The page sits on top of the CLI's own pieces: one ``load_checkpoint``, a ``Classifier`` whose
candidates are `classify`'s (the checkpoint's own captions, else the Pokedex) and whose name
embeddings come from the same cache, ``search`` over the split embeddings `search` caches, and
``images.open_picture`` for every upload. :class:`PokedexService` holds the model (loaded once) and
answers in plain data, so it is tested without a browser; :func:`build_page` lays it out with Gradio.

The page answers at once: `serve` listens before the split's pictures are encoded, encodes them
in a background thread (the page shows how far it is; classifying works meanwhile) and keeps them
in the embedding cache, so the next start finds them there. Chinese needs a font: the page serves
one as a web font (:func:`web_font`), so a browser on a machine without a CJK font still shows
the names rather than boxes.

Only one forward pass runs at a time: both events share one Gradio concurrency slot, and the
service holds a lock besides (a direct API caller or a test gets the same guarantee). Bad input
(a non-picture, a truncated file, a decompression bomb, a huge picture, an empty query) is a
``UserError`` the page shows as a warning and a message; the server carries on.
"""
import os
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path

from cn_clip_pokemon.dataset_format import EVAL_SPLIT, SPLITS
from cn_clip_pokemon.errors import UserError, install_hint
from cn_clip_pokemon.web_font import fetch_web_font_in_background, web_font, web_font_css

TOP_NAMES = 5
SEARCH_RESULTS = 12
EXAMPLE_COUNT = 6
# The model sees 64-224 px: a phone photo (up to ~50 megapixels) is fine, more is refused before
# it is decoded (Pillow's own bomb limit is 89 million, and it only warns below twice that).
MAX_PICTURE_PIXELS = 64_000_000
MAX_UPLOAD = "32mb"
DEFAULT_HOST = "127.0.0.1"
CONCURRENCY_GROUP = "model"  # classify and search share it: one forward pass at a time
ENCODER_THREAD = "cn-clip-pokemon-encoder"  # the thread that encodes the searched split behind the page
STATUS_SECONDS = 1.0  # how often an open page asks how far the encoding is, while it runs
WEB_EXTRA_HINT = install_hint("web")


def require_gradio():
    """The gradio module, or a UserError saying how to install the web extra."""
    # Gradio's usage telemetry is off unless the user turns it on: the page works offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise UserError(f"the web page needs Gradio, which is not installed ({error}): {WEB_EXTRA_HINT}") from None
    return gradio


# --------------------------------------------------------------------------- the model behind the page


class NotReady(UserError):
    """Search asked for while the split's pictures are still being encoded."""


class _Stopped(Exception):
    """The background encoding was asked to stop (the page is closing)."""


class PokedexService:
    """The model loaded once, answering the page's two questions in plain data.

    ``classify_upload(upload)`` takes Gradio's file payload (``{"path", "orig_name"}``, or a path)
    and returns ``[{"name", "number", "probability", "picture"}]``; ``search_text(query)`` returns
    ``{"query", "number", "results": [{"rank", "name", "number", "score", "picture"}]}`` (any name of a
    Pokemon is searched for, and answered with, its official name and number). Both raise UserError
    for bad input.

    ``names=None`` ranks what `classify` ranks by default: the checkpoint's own captions, or the
    Pokedex for a checkpoint that has none. The searched split's picture embeddings are read from
    the cache or encoded in the constructor; with ``encode_now=False`` that waits for
    :meth:`start_encoding` (a background thread, one batch per forward pass, so classifying goes
    on meanwhile) and :meth:`encoding_status` says how far it is; until then search raises
    :class:`NotReady`.
    """

    def __init__(self, checkpoint, dataset=None, split=EVAL_SPLIT, names=None, templates=None, device=None, top_k=TOP_NAMES,
                 progress=True, cache=True, batch_size=32, encode_now=True, **load_options):
        from cn_clip_pokemon.checkpoint import load_checkpoint
        from cn_clip_pokemon.classify import Classifier
        from cn_clip_pokemon.encoding import DEFAULT_TEMPLATES, require_positive

        require_positive(top_k=top_k, batch_size=batch_size)
        self.top_k = top_k
        self.batch_size = batch_size
        self.progress = progress
        self.lock = threading.Lock()
        self.cache = cache
        self.loaded = load_checkpoint(checkpoint, device=device, **load_options)
        self.classifier = Classifier(
            checkpoint, names=names, templates=templates or DEFAULT_TEMPLATES, loaded=self.loaded, progress=progress, cache=cache
        )
        # the page's words for where classify's names came from
        self.candidates_from = {"given": "given", "checkpoint": "the checkpoint's captions", "pokedex": "the Pokedex"}[
            self.classifier.names_from
        ]
        self.dataset = Path(dataset) if dataset is not None else None
        self.split = split
        self.pictures = None  # the split searched, open while serving
        self.other_splits = {}  # splits opened for candidates' pictures
        self.reference_of_name = {}  # name -> (split, image_id) of the picture shown for it
        self.example_ids = []
        self.embeddings = None  # the searched split's picture embeddings, once encoded
        self.encoded = 0  # pictures of it encoded so far
        self.encoding_error = None
        self._encoder = None
        self._stopping = threading.Event()
        if self.dataset is not None:
            self._open_dataset()
            if encode_now:
                try:
                    self.encode_split()
                except BaseException:
                    self.close()
                    raise

    def _open_dataset(self):
        from cn_clip_pokemon.dataset_split import SplitPictures

        self.pictures = SplitPictures(self.dataset, self.split)
        self.reference_of_name = self._reference_pictures()
        # Examples: one picture each of names spread over the split.
        first_of_name = {}
        for image_id in self.pictures.image_ids:
            first_of_name.setdefault(self.pictures.label(image_id), image_id)
        firsts = list(first_of_name.values())
        self.example_ids = firsts[:: max(1, len(firsts) // EXAMPLE_COUNT)][:EXAMPLE_COUNT]

    def _reference_pictures(self):
        """name -> (split, image_id): the picture shown for a candidate name.

        A front view from the training split where there is one (split by view, every Pokemon has
        training pictures; the test split may have none of it), read from dataset_info.json; for a
        dataset without that file, the searched split's first picture of the name.
        """
        def preference(entry):
            return (entry.get("split") != "train", not str(entry.get("view", "")).startswith("front"))

        chosen = {}
        images = (self.pictures.info or {}).get("images", {})
        for image_id, entry in sorted(images.items(), key=lambda item: int(item[0])):
            name = entry.get("name")
            if name and entry.get("split") and (name not in chosen or preference(entry) < chosen[name][0]):
                chosen[name] = (preference(entry), entry["split"], int(image_id))
        references = {name: (split, image_id) for name, (_, split, image_id) in chosen.items()}
        for image_id in self.pictures.image_ids:
            references.setdefault(self.pictures.label(image_id), (self.split, image_id))
        return references

    def _split_pictures(self, split):
        from cn_clip_pokemon.dataset_split import SplitPictures

        if split == self.split:
            return self.pictures
        if split not in self.other_splits:
            self.other_splits[split] = SplitPictures(self.dataset, split)
        return self.other_splits[split]

    # ---------------------------------------------------------------- the searched split's embeddings

    def encode_split(self):
        """Read the split's picture embeddings from the cache, or encode them (and cache them).

        Blocks; safe in a background thread: the service's lock is held for each forward pass only,
        and :attr:`encoded` counts the pictures done. Search answers once :attr:`embeddings` is set.
        """
        from cn_clip_pokemon.encoding import picture_vectors, split_embeddings

        def each_batch(done):
            self.encoded = done
            if self._stopping.is_set():
                raise _Stopped()

        try:
            embeddings = split_embeddings(self.loaded, self.pictures, cache=self.cache, batch_size=self.batch_size,
                                          progress=self.progress, each_batch=each_batch, lock=self.lock)
        except UserError as error:
            self.encoding_error = str(error)
            raise
        self.encoded = len(self.pictures.image_ids)
        # one vector a picture (several views averaged once, not at every search)
        self.embeddings = picture_vectors(self.loaded, embeddings)

    def start_encoding(self):
        """:meth:`encode_split` in a background thread (once); a failure is one line on stderr, and
        the page's search says it."""
        if self.pictures is None or self._encoder is not None:
            return

        def encode():
            try:
                self.encode_split()
            except _Stopped:
                pass
            except UserError as error:
                print(f"cn-clip-pokemon: error: search is unavailable: {error}", file=sys.stderr)
            except Exception as error:  # a bug of ours: the page keeps classifying, the console has the details
                self.encoding_error = f"encoding the {self.split} split failed ({type(error).__name__}: {error})"
                traceback.print_exc()

        self._encoder = threading.Thread(target=encode, name=ENCODER_THREAD, daemon=True)
        self._encoder.start()

    def encoding_status(self):
        """``{"state", "done", "total", "message"}``: state "none" (no dataset), "encoding",
        "ready" or "failed"; the message is what the page shows above the search box."""
        if self.pictures is None:
            return {"state": "none", "done": 0, "total": 0, "message": ""}
        total, done = len(self.pictures.image_ids), self.encoded
        if self.embeddings is not None:
            state, message = "ready", f"{total:,} pictures of the {self.split} split, ready to search"
        elif self.encoding_error is not None:
            state, message = "failed", f"search is unavailable: {self.encoding_error}"
        else:
            state = "encoding"
            message = (f"encoding {done:,}/{total:,} pictures of the {self.split} split… "
                       "search works when they are done; classifying works now")
        return {"state": state, "done": done, "total": total, "message": message}

    def close(self):
        self._stopping.set()
        if self._encoder is not None:
            self._encoder.join(60)  # it stops after the batch it is in
            if self._encoder.is_alive():
                return  # still reading the split: leave it open, the process is ending anyway
        for pictures in [self.pictures, *self.other_splits.values()]:
            if pictures is not None:
                pictures.close()
        self.pictures, self.other_splits = None, {}

    # ---------------------------------------------------------------- facts shown on the page

    def describe(self):
        """What the page shows about itself: checkpoint, architecture, candidates, dataset."""
        config = self.loaded.model_config
        architecture = " + ".join(str(config.get(key) or "unregistered") for key in ("vision_model", "text_model"))
        facts = {
            "checkpoint": str(self.loaded.path),
            "architecture": f"{architecture}, {self.loaded.input_resolution} px",
            "candidates": len(self.classifier.names),
            "candidates_from": self.candidates_from,
            "device": str(next(self.loaded.model.parameters()).device),
        }
        if self.pictures is not None:
            facts["dataset"] = f"{self.dataset} ({self.split} split, {len(self.pictures.image_ids)} pictures)"
        return facts

    def example_pictures(self, folder):
        """Write the example pictures to ``folder`` as PNG files; their paths."""
        paths = []
        for image_id in self.example_ids:
            path = Path(folder) / f"{self.split}-{image_id}.png"
            self.pictures.picture(image_id).save(path)
            paths.append(path)
        return paths

    # ---------------------------------------------------------------- the two questions

    def classify_upload(self, upload):
        """Top names for one uploaded picture (Gradio's file payload or a path)."""
        path, shown_name = _uploaded_file(upload)
        _refuse_huge_picture(path, shown_name)
        with self.lock:
            [result] = self.classifier.classify_paths([path], top_k=self.top_k, batch_size=1)
        if "error" in result:
            # open_picture names the server's copy; the user knows the file by its own name
            raise UserError(result["error"].replace(str(path), shown_name))
        return [dict(prediction, picture=self._picture_of(prediction["name"])) for prediction in result["predictions"]]

    def search_text(self, query, top_k=SEARCH_RESULTS):
        """The split's pictures best matching ``query`` (traditional characters are simplified)."""
        from cn_clip_pokemon.search import search

        if self.pictures is None:
            raise UserError("search needs a dataset: start the page with --dataset DIR")
        query = (query or "").strip()
        if not query:
            raise UserError("the search text is empty: type a name such as 喷火龙, or a description")
        status = self.encoding_status()
        if status["state"] != "ready":
            raise (NotReady if status["state"] == "encoding" else UserError)(status["message"])
        with self.lock:
            # the split this page keeps open: searched, not opened again per query
            found = search(self.loaded.path, self.dataset, query=query, top_k=top_k, loaded=self.loaded, progress=False,
                           pictures=self.pictures, embeddings=self.embeddings, cache=self.cache)
        results = [
            {
                "rank": result["rank"],
                "name": result["name"],
                "number": result["number"],
                "score": result["score"],
                "picture": self.pictures.picture(result["image_id"]),
            }
            for result in found["results"]
        ]
        return {"query": found["query"], "number": found["number"], "results": results}

    def _picture_of(self, name):
        """The dataset's picture of a candidate name, or None when it has none."""
        if name not in self.reference_of_name:
            return None
        split, image_id = self.reference_of_name[name]
        try:
            return self._split_pictures(split).picture(image_id)
        except UserError:  # a split or picture missing from disk: the names still answer
            return None


def _uploaded_file(upload):
    """``(path, the name the user knows)`` from Gradio's file payload (a dict) or a plain path."""
    if isinstance(upload, (str, Path)):
        return Path(upload), Path(upload).name
    path = (upload or {}).get("path")
    if not path:
        raise UserError("the page sent no picture file: upload, paste or drop the picture again")
    return Path(path), upload.get("orig_name") or Path(path).name


def _refuse_huge_picture(path, shown_name):
    """A UserError when the picture's header says it has more than MAX_PICTURE_PIXELS.

    Reads the header only. Anything Pillow cannot even open here is left to open_picture, which
    says what is wrong with it (not a picture, a bomb beyond Pillow's own limit, ...).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as header:
                width, height = header.size
    except Exception:
        return
    if width * height > MAX_PICTURE_PIXELS:
        raise UserError(
            f"{shown_name}: {width} x {height} pixels is more than this page takes "
            f"({MAX_PICTURE_PIXELS // 1_000_000} million pixels): shrink it first, the model looks at a few hundred"
        )


# --------------------------------------------------------------------------- the page


def _caption(item, value):
    number = f" #{item['number']}" if item.get("number") else ""
    return f"{item.get('name') or '?'}{number}  {value}".strip()


def _percent(probability):
    return f"{probability * 100:.1f}%"


def _facts_markdown(facts):
    lines = [
        f"**checkpoint** `{facts['checkpoint']}`",
        f"**architecture** {facts['architecture']} · {facts['device']}",
        f"**candidates** {facts['candidates']:,} names ({facts['candidates_from']})",
        f"**dataset** `{facts['dataset']}`" if "dataset" in facts else "**dataset** none (start with `--dataset DIR` to search pictures by text)",
    ]
    return "  \n".join(lines)


def _answer_or_message(gr, work):
    """``(work(), "")``; a UserError (or a failure of ours) becomes a page warning and a message instead."""
    try:
        return work(), ""
    except NotReady as error:  # not a fault: the answer comes once the split is encoded
        gr.Info(str(error))
        return None, f"⏳ {error}"
    except UserError as error:
        message = str(error)
    except Exception as error:  # a bug of ours must not cost the user the server either
        traceback.print_exc()
        message = f"the server failed on this request ({type(error).__name__}: {error}); its console shows the details"
    gr.Warning(message)
    return None, f"⚠️ {message}"


def build_page(service, examples_dir=None, font=None):
    """The Gradio Blocks of the page, not launched: a picture -> top names; a text -> a gallery.

    ``examples_dir``: a folder to write the clickable example pictures into (none without it).
    ``font``: a CJK font file (.ttf, .otf, .woff) the page serves for its Chinese text. What
    :func:`launch_page` must pass on to serve it all is kept in ``page.launch_options``.
    """
    import inspect

    gr = require_gradio()
    theme = gr.themes.Default()
    style = {"theme": theme, "css": web_font_css(font, theme) if font else None}
    # Gradio 6 takes the theme and the CSS in launch(), Gradio 5 in the Blocks
    style_at_launch = "css" in inspect.signature(gr.Blocks.launch).parameters

    def classify_event(upload):
        if not upload:  # the picture was cleared
            return None, None, ""
        predictions, message = _answer_or_message(gr, lambda: service.classify_upload(upload))
        if predictions is None:
            return None, None, message
        label = {_caption(p, ""): p["probability"] for p in predictions}
        gallery = [(p["picture"], _caption(p, "")) for p in predictions if p["picture"] is not None]
        return label, gallery or None, f"**{_caption(predictions[0], _percent(predictions[0]['probability']))}**"

    def status_event():
        status = service.encoding_status()
        return status["message"], gr.Timer(active=status["state"] == "encoding")

    def search_event(query):
        found, message = _answer_or_message(gr, lambda: service.search_text(query))
        if found is None:
            return None, message
        gallery = [(r["picture"], f"{r['rank']}. " + _caption(r, f"{r['score']:.3f}")) for r in found["results"]]
        return gallery, f"“{_caption({'name': found['query'], 'number': found['number']}, '')}”: {len(gallery)} pictures"

    facts = service.describe()
    with gr.Blocks(title="cn-clip-pokemon", analytics_enabled=False, **({} if style_at_launch else style)) as page:
        gr.Markdown("## 这是哪只宝可梦？ Which Pokémon is this?")
        gr.Markdown(_facts_markdown(facts), elem_id="facts")
        with gr.Row():
            with gr.Column():
                picture = gr.Image(
                    type="filepath", sources=["upload", "clipboard"], label="图片 Picture: upload, paste or drop",
                    height=280, elem_id="picture",
                )
                if examples_dir is not None and service.example_ids:
                    gr.Examples(
                        [[str(path)] for path in service.example_pictures(examples_dir)],
                        inputs=[picture],
                        label=f"测试图片 Pictures of the {service.split} split",
                    )
            with gr.Column():
                picture_message = gr.Markdown(elem_id="picture-message")
                names = gr.Label(num_top_classes=service.top_k, label=f"Top-{service.top_k}", elem_id="names")
                candidates = gr.Gallery(
                    label="候选 Candidates in the dataset", columns=service.top_k, height=200, object_fit="contain", format="png",
                    visible=service.pictures is not None, elem_id="candidates",
                )
        # preprocess=False: the handler gets the uploaded file itself, not a picture Gradio decoded
        # with its own checks, so every upload goes through open_picture and its refusals.
        picture.change(
            classify_event, inputs=picture, outputs=[names, candidates, picture_message],
            preprocess=False, api_name="classify", concurrency_id=CONCURRENCY_GROUP,
        )
        if service.pictures is not None:
            gr.Markdown("### 以文搜图 Search the pictures by text")
            # How far the split's encoding is: asked once a second while it runs, never queued
            # behind a forward pass.
            status = service.encoding_status()
            encoding = gr.Markdown(status["message"], elem_id="search-status")
            timer = gr.Timer(STATUS_SECONDS, active=status["state"] == "encoding")
            for trigger in (page.load, timer.tick):
                trigger(status_event, outputs=[encoding, timer], queue=False, show_progress="hidden")
            with gr.Row():
                query = gr.Textbox(label="名称或描述 Name or description (繁體 → 简体)", placeholder="喷火龙", scale=4, elem_id="query")
                search_button = gr.Button("搜索 Search", variant="primary", scale=1, elem_id="search")
            search_message = gr.Markdown(elem_id="search-message")
            found = gr.Gallery(label="结果 Results", columns=6, height=400, object_fit="contain", format="png", elem_id="found")
            gr.on(
                [query.submit, search_button.click], search_event, inputs=query, outputs=[found, search_message],
                api_name="search", concurrency_id=CONCURRENCY_GROUP,
            )
    # One queue slot for the model's group: a burst of requests waits its turn instead of running
    # forward passes side by side on the CPU.
    page.queue(default_concurrency_limit=1, max_size=256)
    allowed = [str(path) for path in (examples_dir, font) if path]
    page.launch_options = dict(style if style_at_launch else {}, allowed_paths=allowed or None)
    return page


def launch_page(page, host=DEFAULT_HOST, port=None):
    """Start serving ``page`` (made by :func:`build_page`) in the background; returns its local URL."""
    try:
        page.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, quiet=True,
            max_file_size=MAX_UPLOAD, prevent_thread_lock=True, **page.launch_options,
        )
    except OSError as error:
        where = f"port {port}" if port else "ports 7860-7959"
        if "Cannot find empty port" in str(error):  # Gradio's words, which name its launch() arguments
            raise UserError(f"{where} on {host} already in use: pick a free one with --port") from None
        raise UserError(f"cannot serve on {host}, {where}: {error}; check --host and --port") from None
    return page.local_url


# --------------------------------------------------------------------------- the command


def serve_arguments(parser):
    from cn_clip_pokemon.arguments import port_number, positive_int, prompt_template
    from cn_clip_pokemon.model_options import add_model_options

    parser.description = (
        "A web page over a checkpoint: upload, paste or drop a picture for its top-5 Pokemon names "
        "(with each candidate's picture from --dataset), or search the dataset's pictures by text. "
        "The model loads once; name and picture embeddings come from the same cache as classify and "
        "search. The page answers at once: the split's pictures are encoded behind it (the page shows "
        "how far; classifying works meanwhile) and cached, so the next start finds them. The page "
        "serves a Chinese web font, so a browser without one shows the names. "
        f"Needs the web extra: {WEB_EXTRA_HINT}."
    )
    add_model_options(parser)  # --checkpoint, --device, --vision-model, --text-model, --batch-size, --no-cache
    parser.add_argument("--dataset", metavar="DIR", help="a dataset built by `cn-clip-pokemon build-dataset`: enables text search, candidates' pictures and examples")
    parser.add_argument("--split", default=EVAL_SPLIT, choices=SPLITS, help="the dataset split to show and search (default %(default)s)")
    parser.add_argument("--names", nargs="+", metavar="NAME", help="candidate names, as for classify (default: the captions the checkpoint was trained on; all 1025 Pokemon for a checkpoint without them)")
    parser.add_argument("--names-file", metavar="FILE", help="a UTF-8 file of candidate names, one per line")
    parser.add_argument("--template", action="append", type=prompt_template, metavar="TEXT", help="prompt template with {} for the name, repeatable (as for classify)")
    parser.add_argument("--top-k", type=positive_int, default=TOP_NAMES, help=f"names shown per picture (default {TOP_NAMES})")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 lets the network in)")
    parser.add_argument("--port", type=port_number, default=None, help="port, 1-65535 (default 7860, or the next free one)")


def serve_command(args):
    from cn_clip_pokemon.dataset_format import check_templates
    from cn_clip_pokemon.classify import candidate_names
    from cn_clip_pokemon.model_options import model_options

    require_gradio()  # before the model loads: a missing extra is said at once
    names = candidate_names(args.names, args.names_file) if (args.names or args.names_file) else None
    service = PokedexService(
        args.checkpoint, dataset=args.dataset, split=args.split, names=names,
        templates=check_templates(args.template), device=args.device, top_k=args.top_k,
        cache=not args.no_cache, batch_size=args.batch_size, encode_now=False, **model_options(args),
    )
    try:
        font, missing = web_font()
        if missing:
            fetch_web_font_in_background()
        with tempfile.TemporaryDirectory(prefix="cn-clip-pokemon-examples-") as examples_dir:
            page = build_page(service, examples_dir=examples_dir, font=font)
            url = launch_page(page, host=args.host, port=args.port)
            print(f"cn-clip-pokemon: serving {url} (Ctrl-C stops it)", file=sys.stderr)
            # the page answers from now on; search answers once the split is encoded behind it
            service.start_encoding()
            try:
                page.block_thread()  # until Ctrl-C
            finally:
                page.close()
    finally:
        service.close()
    return 0
