"""`serve`: the web page answers like `classify` and `search` (among the checkpoint's own captions),
survives bad input, runs one forward pass at a time, answers before the split is encoded (and
from the cache after a restart), and works in a real browser (Debian's Chromium, headless, through
Selenium) that has no Chinese font of its own: the page serves one.

The model is our tiny registered architecture with random weights; the dataset is built from
generated pictures, so nothing here needs the network or the shared sprite copies.
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import urllib.request
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip.model import CLIP  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from cn_clip_pokemon.dataset_split import SplitPictures  # noqa: E402
from cn_clip_pokemon.serve import ENCODER_THREAD, MAX_PICTURE_PIXELS, NotReady, PokedexService  # noqa: E402
from cn_clip_pokemon.web_font import WEB_FONT_FAMILY  # noqa: E402
from conftest import STATUS_FIELD, random_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POKEMON = {"0001妙蛙种子": (60, 170, 90), "0004小火龙": (240, 120, 40), "0006喷火龙": (200, 60, 30),
           "0007杰尼龟": (60, 120, 230), "0025皮卡丘": (250, 210, 40), "0039胖丁": (250, 170, 200)}
NAMES = [folder[4:] for folder in POKEMON]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def disc(path, colour, inset=0, size=(40, 40)):
    """A coloured disc on transparency, like a sprite."""
    picture = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((4 + inset, 4, size[0] - 4 - inset, size[1] - 4), fill=colour + (255,))
    picture.save(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tiny random checkpoint and a dataset of six generated Pokemon, six views each (64 px)."""
    from cn_clip_pokemon.builder.build import build_dataset

    root = tmp_path_factory.mktemp("serve")
    checkpoint = random_checkpoint(root / "epoch_latest.pt")
    for folder, colour in POKEMON.items():
        (root / "pictures" / folder).mkdir(parents=True)
        for inset, view in enumerate(["front_00", "back_00", "shiny_00", "front_01", "back_01", "shiny_01"]):
            disc(root / "pictures" / folder / f"{view}.png", colour, inset)
    build_dataset(root / "pictures", root / "dataset", image_size=64, split_by="view", test_fraction=0.34, seed=0, progress=False, workers=1)
    return {"checkpoint": checkpoint, "dataset": root / "dataset", "root": root}


def with_captions(checkpoint, path, captions):
    """A copy of ``checkpoint`` that records the captions it was trained on (the "captions" key,
    next to model_config), as training writes it; a fresh file, so its embedding cache is empty."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["captions"] = list(captions)
    torch.save(saved, path)
    return path


def wait_until(condition, seconds=60, what="the condition"):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"{what} did not happen in {seconds} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def service(served):
    service = PokedexService(served["checkpoint"], dataset=served["dataset"], names=NAMES, device="cpu", progress=False)
    yield service
    service.close()


def classify_json(checkpoint, picture, capsys, names=NAMES):
    """What `cn-clip-pokemon classify --json` says about one picture, among ``names`` (None: its default)."""
    capsys.readouterr()
    names = ["--names", *names] if names else []
    assert main(["classify", str(picture), "--checkpoint", str(checkpoint), *names, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)["results"][0]["predictions"]


# --------------------------------------------------------------------------- the service, no browser


def test_answers_are_the_commands_answers(service, served, tmp_path, capsys):
    picture = disc(tmp_path / "yellow.png", (250, 210, 40), 2)
    page = service.classify_upload({"path": str(picture), "orig_name": "yellow.png"})
    expected = classify_json(served["checkpoint"], picture, capsys)
    assert [(p["name"], p["number"]) for p in page] == [(p["name"], p["number"]) for p in expected]
    assert [p["probability"] for p in page] == pytest.approx([p["probability"] for p in expected], abs=1e-6)
    assert all(p["picture"].mode == "RGB" for p in page)  # each candidate's own picture from the dataset

    found = service.search_text(" 噴火龍 ")  # traditional, padded: searched as 喷火龙
    capsys.readouterr()
    assert main(["search", "喷火龙", "--checkpoint", str(served["checkpoint"]), "--dataset", str(served["dataset"]),
                 "--top-k", "12", "--json", "--device", "cpu"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert found["query"] == expected["query"] == "喷火龙"
    assert [(r["name"], r["score"]) for r in found["results"]] == [(r["name"], pytest.approx(r["score"], abs=1e-6)) for r in expected["results"]]
    assert found["results"][0]["number"] is not None and found["results"][0]["picture"].size == (64, 64)

    facts = service.describe()
    assert facts["architecture"] == "ViT-T-8-64 + RBT-Tiny-chinese, 64 px" and facts["candidates"] == len(NAMES)
    assert "test split" in facts["dataset"] and len(service.example_ids) >= 4


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` and holds one empty row: a bomb's header, tiny on disk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def truncated(path):
    disc(path, (10, 200, 10), size=(300, 300))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def text_file(path):
    path.write_text("not a picture\n")
    return path


def empty_file(path):
    path.write_bytes(b"")
    return path


BAD_UPLOADS = {  # kind: (how to make it, what the message says)
    "text named .png": (text_file, "not a picture"),
    "empty file": (empty_file, "empty file"),
    "truncated": (truncated, "damaged or truncated"),
    "decompression bomb": (lambda path: png_header_only(path, 40_000, 40_000), "decompression bomb"),
    "huge picture": (lambda path: png_header_only(path, 9_000, 8_000), "more than this page takes"),
}
# the huge picture is under Pillow's own bomb limit: only the page's limit refuses it
assert MAX_PICTURE_PIXELS < 9_000 * 8_000 < 89_478_485


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_bad_upload_is_a_message_and_the_next_one_works(service, tmp_path, kind):
    make, said = BAD_UPLOADS[kind]
    # the server's copy sits in a folder of its own; the user knows the file by its own name
    (tmp_path / "gradio-upload-3f2a").mkdir()
    server_copy = make(tmp_path / "gradio-upload-3f2a" / "mine.png")
    started = time.perf_counter()
    with pytest.raises(UserError, match=said) as refused:
        service.classify_upload({"path": str(server_copy), "orig_name": "mine.png"})
    assert time.perf_counter() - started < 5  # refused from the header, never decoded
    assert str(refused.value).startswith("mine.png: ") and "gradio-upload" not in str(refused.value)
    good = service.classify_upload({"path": str(disc(tmp_path / "good.png", (60, 120, 230))), "orig_name": "good.png"})
    assert len(good) == 5 and good[0]["name"] in NAMES


def test_an_empty_query_or_a_missing_file_is_a_message(service):
    for query in ("", "   ", None):
        with pytest.raises(UserError, match="search text is empty"):
            service.search_text(query)
    with pytest.raises(UserError, match="no picture file"):
        service.classify_upload({"path": None, "url": "data:image/png;base64,AAAA"})
    assert service.search_text("皮卡丘")["results"]


def test_one_forward_pass_at_a_time(service, tmp_path, monkeypatch):
    """A burst of classify and search requests from many threads never overlaps two forward passes."""
    running, overlaps, lock = [0], [], threading.Lock()
    encode_text, encode_image = CLIP.encode_text, CLIP.encode_image

    def watched(encode):
        def forward(self, *args, **kwargs):
            with lock:
                running[0] += 1
                overlaps.append(running[0])
            time.sleep(0.02)  # long enough for an unguarded second request to arrive meanwhile
            try:
                return encode(self, *args, **kwargs)
            finally:
                with lock:
                    running[0] -= 1
        return forward

    monkeypatch.setattr(CLIP, "encode_text", watched(encode_text))
    monkeypatch.setattr(CLIP, "encode_image", watched(encode_image))
    picture = disc(tmp_path / "red.png", (200, 60, 30))
    errors = []

    def request(index):
        try:
            service.classify_upload(str(picture)) if index % 2 else service.search_text("小火龙")
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(overlaps) >= 8 and max(overlaps) == 1


def test_without_a_dataset_the_page_classifies_and_search_says_what_it_needs(served, tmp_path):
    service = PokedexService(served["checkpoint"], names=NAMES, device="cpu", progress=False)
    predictions = service.classify_upload(str(disc(tmp_path / "red.png", (200, 60, 30))))
    assert len(predictions) == 5 and all(p["picture"] is None for p in predictions)
    with pytest.raises(UserError, match="--dataset DIR"):
        service.search_text("喷火龙")
    assert "dataset" not in service.describe()
    pytest.importorskip("gradio", reason="pip install 'cn-clip-pokemon[web]' to build the page")
    from cn_clip_pokemon.serve import build_page

    (tmp_path / "examples").mkdir()
    page = build_page(service, examples_dir=tmp_path / "examples")
    assert sorted(fn.api_name for fn in page.fns.values() if fn.api_name) == ["classify"]  # no search box
    assert not list((tmp_path / "examples").iterdir())  # and no examples to click


def test_the_page_ranks_the_checkpoints_own_captions(served, tmp_path):
    """A checkpoint trained on other captions is asked about those, not about the 1025 Pokemon."""
    captions = ["红色圆形", "蓝色圆形", "黄色圆形"]
    checkpoint = with_captions(served["checkpoint"], tmp_path / "shapes.pt", captions)
    service = PokedexService(checkpoint, device="cpu", progress=False)
    try:
        assert service.classifier.names == captions
        facts = service.describe()
        assert (facts["candidates"], facts["candidates_from"]) == (3, "the checkpoint's captions")
        predictions = service.classify_upload(str(disc(tmp_path / "red.png", (200, 60, 30))))
        assert sorted(p["name"] for p in predictions) == sorted(captions)
    finally:
        service.close()


def test_search_waits_for_the_encoding_behind_the_page_and_a_restart_reads_the_cache(served, tmp_path, monkeypatch):
    checkpoint = with_captions(served["checkpoint"], tmp_path / "epoch_latest.pt", NAMES)  # no cache yet
    allowed = threading.Semaphore(0)  # pictures the background encoder may read
    picture = SplitPictures.picture

    def gated(self, image_id):
        if threading.current_thread().name == ENCODER_THREAD:
            assert allowed.acquire(timeout=60)
        return picture(self, image_id)

    monkeypatch.setattr(SplitPictures, "picture", gated)
    service = PokedexService(checkpoint, dataset=served["dataset"], device="cpu", progress=False, batch_size=4, encode_now=False)
    try:
        total = len(service.pictures.image_ids)
        assert total > 8
        service.start_encoding()
        assert service.encoding_status()["state"] == "encoding"
        with pytest.raises(NotReady, match=f"^encoding 0/{total} pictures of the test split… search works when"):
            service.search_text("喷火龙")
        # classifying answers meanwhile: the encoder holds the model for one batch at a time only
        assert service.classify_upload(str(disc(tmp_path / "red.png", (200, 60, 30))))[0]["name"] in NAMES

        for _ in range(4):
            allowed.release()
        wait_until(lambda: service.encoding_status()["done"] == 4, what="the first batch")
        assert service.encoding_status()["message"].startswith(f"encoding 4/{total} pictures")
        for _ in range(total - 4):
            allowed.release()
        wait_until(lambda: service.encoding_status()["state"] == "ready", what="the encoding")
        assert service.encoding_status()["message"] == f"{total} pictures of the test split, ready to search"
        found = service.search_text("喷火龙")["results"]
        assert len(found) == min(total, 12) and {r["name"] for r in found} <= set(NAMES)
    finally:
        service.close()

    # a restart finds the embeddings in the cache: no picture is encoded again
    def no_picture_encoding(*args, **kwargs):
        raise AssertionError("the split was encoded again")

    monkeypatch.setattr(CLIP, "encode_image", no_picture_encoding)
    again = PokedexService(checkpoint, dataset=served["dataset"], device="cpu", progress=False, encode_now=False)
    try:
        again.start_encoding()
        wait_until(lambda: again.encoding_status()["state"] != "encoding", seconds=20, what="reading the cache")
        assert again.encoding_status()["state"] == "ready"
        assert [r["score"] for r in again.search_text("喷火龙")["results"]] == pytest.approx([r["score"] for r in found], abs=1e-6)
    finally:
        again.close()


def test_a_port_out_of_range_is_a_usage_error_before_the_model_loads(tmp_path, capsys):
    missing = tmp_path / "never-read.pt"  # the model would fail to load: the port is refused first
    for port in ("99999", "65536", "0", "http"):
        assert main(["serve", "--checkpoint", str(missing), "--port", port]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--port" in err and "never-read.pt" not in err, err


# the child's own peak (VmHWM): ru_maxrss would carry the pytest parent's peak across exec and never grow
LONG_THIN_UPLOADS = STATUS_FIELD + """
import json, sys
import cn_clip_pokemon
from PIL import Image
from cn_clip_pokemon.serve import PokedexService

checkpoint, folder, names = sys.argv[1], sys.argv[2], sys.argv[3:]
service = PokedexService(checkpoint, names=names, device="cpu", progress=False)
for name, size in (("small", (40, 40)), ("tall", (1, 16000)), ("wide", (16000, 1))):
    Image.new("RGB", size, (200, 60, 30)).save(f"{folder}/{name}.png")
service.classify_upload(f"{folder}/small.png")  # everything a first answer allocates
peak_mb = lambda: status_field("VmHWM") // 2**20
before = peak_mb()
top = [service.classify_upload(f"{folder}/{name}.png")[0]["name"] for name in ("tall", "wide")]
print(json.dumps({"before": before, "after": peak_mb(), "top": top}))
"""


def test_a_long_thin_upload_costs_no_more_memory_than_a_small_one(served, tmp_path):
    """A 1 x 16000 picture is 16,000 pixels: padding it to a square before shrinking it would
    allocate 16000 x 16000 (768 MB). The page's path bounds memory by the model's input size."""
    done = subprocess.run([sys.executable, "-c", LONG_THIN_UPLOADS, str(served["checkpoint"]), str(tmp_path), *NAMES],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["after"] - measured["before"] < 100, measured  # peak resident memory, MB
    assert all(name in NAMES for name in measured["top"])


def test_the_web_font_is_one_a_browser_loads(tmp_path, monkeypatch):
    """The machine's CJK font when it is a single face; for a .ttc collection (which Chromium refuses)
    or none, the Noto Sans SC the demo fetches, from the cache or still to fetch."""
    from cn_clip_pokemon import grids
    from cn_clip_pokemon.web_font import web_font, web_font_css

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for machine_font in ("/fonts/DroidSansFallbackFull.ttf", "/fonts/wqy-microhei.ttc", None):
        monkeypatch.setattr(grids, "find_cjk_font", lambda: machine_font)
        expected = Path(machine_font) if machine_font and machine_font.endswith(".ttf") else grids.fetched_font_path()
        assert web_font() == (expected, expected == grids.fetched_font_path())
    grids.fetched_font_path().parent.mkdir(parents=True)
    grids.fetched_font_path().write_bytes(b"a font")
    assert web_font() == (grids.fetched_font_path(), False)

    css = web_font_css(Path("/a folder/字体.ttf"), type("Theme", (), {"font": "'Source Sans Pro', sans-serif", "font_mono": "monospace"}))
    assert 'url("gradio_api/file=/a%20folder/%E5%AD%97%E4%BD%93.ttf") format("truetype")' in css
    assert f'--font: "{WEB_FONT_FAMILY}", \'Source Sans Pro\', sans-serif;' in css and "unicode-range: U+2E80" in css


def test_without_gradio_serve_says_what_to_install(served, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["serve", "--checkpoint", str(served["checkpoint"])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "[web]'" in err


def test_serve_help_explains_itself():
    done = subprocess.run([sys.executable, "-m", "cn_clip_pokemon", "serve", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for flag in ("--checkpoint", "--dataset", "--host", "--port", "[web]"):
        assert flag in done.stdout


# --------------------------------------------------------------------------- the page in Chromium


def browser_missing():
    """Why the browser test cannot run here, or None."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install chromium chromium-driver (Debian's; .ci/run does it)"
    for module, extra in (("gradio", "web"), ("selenium", "test")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install 'cn-clip-pokemon[{extra}]'"
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# The real command, with one thing added for the test: the background encoder may read only as
# many of the split's pictures as the file $CN_CLIP_POKEMON_TEST_GATE says, so the test decides
# when the encoding gets on (the product never waits).
GATED_SERVE = """
import os, sys, threading, time
import cn_clip_pokemon
from cn_clip_pokemon.dataset_split import SplitPictures
from cn_clip_pokemon.serve import ENCODER_THREAD

gate, read, picture = os.environ["CN_CLIP_POKEMON_TEST_GATE"], [0], SplitPictures.picture

def allowed():
    # the test rewrites the gate while this reads it: an empty read is "not yet"
    return int(open(gate).read().strip() or 0)

def gated(self, image_id):
    if threading.current_thread().name == ENCODER_THREAD:
        while read[0] >= allowed():
            time.sleep(0.05)
        read[0] += 1
    return picture(self, image_id)

SplitPictures.picture = gated
from cn_clip_pokemon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cjk_web_font(folder):
    """A single-face CJK font file, as the demo's fetch leaves it (cache/fonts/NotoSansSC-Regular.ttf),
    without the network: the fetched one when this machine has it, else the machine's CJK font,
    its first face taken out of a .ttc collection; None when there is neither."""
    from cn_clip_pokemon import grids

    target = grids.fetched_font_path(folder / "cache" / "cn-clip-pokemon")
    target.parent.mkdir(parents=True)
    if grids.fetched_font_path().is_file():
        return shutil.copyfile(grids.fetched_font_path(), target)
    found = grids.find_cjk_font()
    if not found:
        return None
    if not found.lower().endswith((".ttc", ".otc")):
        return shutil.copyfile(found, target)
    from fontTools.ttLib import TTCollection

    TTCollection(found).fonts[0].save(target)
    return target


def fontconfig_without_cjk(folder):
    """A fontconfig file that shows the browser this machine's fonts minus every Chinese one."""
    listed = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, timeout=60).stdout
    chinese = subprocess.run(["fc-list", ":lang=zh", "--format", "%{file}\n"], capture_output=True, text=True, timeout=60).stdout
    fonts = folder / "fonts"
    fonts.mkdir(parents=True)
    for index, file in enumerate(sorted(set(listed.split()) - set(chinese.split()))):
        (fonts / f"{index}-{Path(file).name}").symlink_to(file)
    config = folder / "fonts.conf"
    config.write_text(f'<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig><dir>{fonts}</dir>'
                      f"<cachedir>{folder / 'fontconfig-cache'}</cachedir></fontconfig>\n")
    return config


@pytest.fixture
def page(served, tmp_path):
    """`cn-clip-pokemon serve` in a subprocess on 127.0.0.1, over a checkpoint that records its
    captions (no --names), its split's encoding held at the gate: ``{"url", "gate", "checkpoint", ...}``
    once it serves. The Chinese font it serves is the one the demo fetches (:func:`cjk_web_font`)."""
    why = browser_missing()
    if why:
        # a warning too: `pytest -q` lists it in its summary, where a bare skip is one letter
        reason = f"THE WEB PAGE'S BROWSER TEST DID NOT RUN: {why}"
        warnings.warn(reason)
        pytest.skip(reason)
    font = cjk_web_font(tmp_path)
    if font is None:
        pytest.fail("no CJK font here to serve: apt-get install fonts-wqy-microhei (.ci/run does it)")
    checkpoint = with_captions(served["checkpoint"], tmp_path / "epoch_latest.pt", NAMES)
    gate = tmp_path / "gate"
    gate.write_text("0")
    port = free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
               XDG_CACHE_HOME=str(tmp_path / "cache"), CN_CLIP_POKEMON_TEST_GATE=str(gate), CUDA_VISIBLE_DEVICES="")
    env.pop("CN_CLIP_POKEMON_FONT", None)
    command = [sys.executable, "-c", GATED_SERVE, "serve", "--checkpoint", str(checkpoint), "--dataset", str(served["dataset"]),
               "--batch-size", "4", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while "serving http://127.0.0.1" not in log.read_text():
            assert server.poll() is None, f"serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"serve did not start in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield {"url": f"http://127.0.0.1:{port}/", "gate": gate, "checkpoint": checkpoint, "font": font, "log": log}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium that sees none of this machine's Chinese fonts, as on a machine without one."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     # every host name but 127.0.0.1 fails to resolve: the page must need nothing else
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    env = dict(os.environ, FONTCONFIG_FILE=str(fontconfig_without_cjk(tmp_path / "browser-fonts")))
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# Each of 皮, 卡, 丘 drawn alone, in the page's own font list and in a bare sans-serif: PNG data URLs.
# A character without a font is the same empty box as any other, so three different drawings mean
# three real glyphs. And which Chinese texts on the page are not given the page's font.
DRAW_GLYPHS = """
const [family, done] = [arguments[0], arguments[arguments.length - 1]];
document.fonts.load(`32px "${family}"`, "皮卡丘").then(() => {
  const draw = (font) => [..."皮卡丘"].map((character) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 48;
    const context = canvas.getContext("2d");
    context.font = font;
    context.fillText(character, 4, 38);
    return canvas.toDataURL();
  });
  const page = getComputedStyle(document.querySelector("#facts")).fontFamily;
  // every piece of Chinese shown on the page, and the font list of those not given the page's font
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const [shown, without] = [[], []];
  while (walker.nextNode()) {
    const element = walker.currentNode.parentElement;
    if (/[\u3400-\u9fff]/.test(walker.currentNode.textContent) && element.getClientRects().length) {
      shown.push(walker.currentNode.textContent.trim());
      const fonts = getComputedStyle(element).fontFamily;
      if (!fonts.includes(family)) without.push(`${walker.currentNode.textContent.trim()} <${element.tagName}>: ${fonts}`);
    }
  }
  done({page: page, with_page_font: draw(`32px ${page}`), bare: draw("32px sans-serif"), shown: shown, without: without,
        faces: [...document.fonts].filter((face) => face.family.replaceAll('"', "") === family).map((face) => face.status),
        requested: performance.getEntriesByType("resource").map((entry) => decodeURIComponent(entry.name))});
});
"""


def test_the_page_in_chromium(served, page, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)

    def text_of(element_id):
        found = browser.find_elements(By.ID, element_id)
        return found[0].text.strip() if found else ""

    def upload(path, says):
        """Upload ``path``; the page's message once it starts with ``says``."""
        browser.find_element(By.CSS_SELECTOR, "#picture input[type=file]").send_keys(str(path))
        wait.until(lambda _: text_of("picture-message").startswith(says))
        return text_of("picture-message")

    def page_top1():
        return wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, "#names [data-testid=label-output-value]").text.strip())

    def search(text):
        query = browser.find_element(By.CSS_SELECTOR, "#query textarea, #query input")
        query.clear()
        query.send_keys(text, Keys.ENTER)

    # the port answers at once: the split's pictures are still held at the gate
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(page["url"], timeout=30) as response:
        assert response.status == 200
    browser.get(page["url"])
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#picture input[type=file]"))
    total = len(SplitPictures(served["dataset"], "test").image_ids)
    wait.until(lambda _: text_of("search-status").startswith(f"encoding 0/{total} pictures of the test split…"))
    facts = text_of("facts")
    assert "ViT-T-8-64 + RBT-Tiny-chinese" in facts and str(page["checkpoint"]) in facts
    assert f"{len(NAMES)} names (the checkpoint's captions)" in facts  # no --names: what the checkpoint was trained on
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=examples] img, .gallery img, button.gallery-item img")) >= 4

    # while encoding: a picture is classified (among the checkpoint's captions, as classify --json
    # does by default); a search says how far the encoding is
    yellow = disc(tmp_path / "yellow.png", (250, 210, 40), 2)
    best = classify_json(page["checkpoint"], yellow, capsys, names=None)[0]
    upload(yellow, says=f"{best['name']} #{best['number']}")
    assert page_top1() == f"{best['name']} #{best['number']}"
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#candidates img")) == 5)
    search("噴火龍")
    wait.until(lambda _: text_of("search-message").startswith(f"⏳ encoding 0/{total} pictures"))

    # the page follows the encoding, batch by batch, then searches
    page["gate"].write_text("4")
    wait.until(lambda _: text_of("search-status").startswith(f"encoding 4/{total} pictures"))
    page["gate"].write_text(str(total))
    wait.until(lambda _: text_of("search-status") == f"{total} pictures of the test split, ready to search")
    search("噴火龍")  # traditional characters: a gallery of the dataset's pictures with their names
    wait.until(lambda _: "喷火龙" in text_of("search-message"))
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#found img")) >= 6)
    assert any(name in text_of("found") for name in NAMES)

    # Chinese is drawn with the served font everywhere (names, gallery captions, labels, the
    # heading), although the browser has no Chinese font of its own
    glyphs = browser.execute_async_script(DRAW_GLYPHS, WEB_FONT_FAMILY)
    assert len(set(glyphs["bare"])) == 1, "this browser draws Chinese without the page's font: the test proves nothing"
    assert len(set(glyphs["with_page_font"])) == 3 and glyphs["page"].startswith(f'"{WEB_FONT_FAMILY}"')
    assert glyphs["faces"] == ["loaded"]
    assert any(name.endswith("=" + str(page["font"])) for name in glyphs["requested"]), glyphs["requested"]
    assert len(glyphs["shown"]) >= 20 and not glyphs["without"], glyphs["without"]
    browser.save_screenshot(str(tmp_path / "serve.png"))

    # a text file named .png: a message in the page, and the next upload still works
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture\n")
    assert upload(bad, says="⚠️") == "⚠️ bad.png: not a picture Pillow can read"
    wait.until(lambda _: any("bad.png" in toast.text for toast in browser.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid=toast-body]")))
    blue = disc(tmp_path / "blue.png", (60, 120, 230))
    best = classify_json(page["checkpoint"], blue, capsys, names=None)[0]
    upload(blue, says=f"{best['name']} #{best['number']}")
    assert page_top1() == f"{best['name']} #{best['number']}"
