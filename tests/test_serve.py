"""`serve`: the web page answers like `classify` and `search`, survives bad input, runs one forward
pass at a time, and works in a real browser (Debian's Chromium, headless, through Selenium).

The model is our tiny registered architecture with random weights; the dataset is built from
generated pictures, so nothing here needs the network or the shared sprite copies.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import cn_clip_pokemon  # noqa: E402,F401  (first: its patches apply to the cn_clip modules imported after it)
from cn_clip.clip.model import CLIP  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cn_clip_pokemon import checkpoint as ckpt  # noqa: E402
from cn_clip_pokemon.cli import main  # noqa: E402
from cn_clip_pokemon.errors import UserError  # noqa: E402
from cn_clip_pokemon.serve import MAX_PICTURE_PIXELS, PokedexService  # noqa: E402

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
    from cn_clip_pokemon.builder import build_dataset

    root = tmp_path_factory.mktemp("serve")
    config = ckpt.model_config_for("ViT-T-8-64", "RBT-Tiny-chinese")
    torch.manual_seed(0)
    checkpoint = ckpt.save_model(CLIP(**config["model_info"]), root / "epoch_latest.pt", config)
    for folder, colour in POKEMON.items():
        (root / "pictures" / folder).mkdir(parents=True)
        for inset, view in enumerate(["front_00", "back_00", "shiny_00", "front_01", "back_01", "shiny_01"]):
            disc(root / "pictures" / folder / f"{view}.png", colour, inset)
    build_dataset(root / "pictures", root / "dataset", image_size=64, split_by="view", test_fraction=0.34, seed=0, progress=False, workers=1)
    return {"checkpoint": checkpoint, "dataset": root / "dataset", "root": root}


@pytest.fixture(scope="module")
def service(served):
    service = PokedexService(served["checkpoint"], dataset=served["dataset"], names=NAMES, device="cpu", progress=False)
    yield service
    service.close()


def classify_json(checkpoint, picture, capsys):
    """What `cn-clip-pokemon classify --json` says about one picture, among NAMES."""
    capsys.readouterr()
    assert main(["classify", str(picture), "--checkpoint", str(checkpoint), "--names", *NAMES, "--json", "--device", "cpu"]) == 0
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


def test_without_gradio_serve_says_what_to_install(served, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["serve", "--checkpoint", str(served["checkpoint"])]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cn-clip-pokemon[web]'" in err


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


@pytest.fixture
def page_url(served, tmp_path):
    """`cn-clip-pokemon serve` in a subprocess on 127.0.0.1; its URL once it serves."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    command = [sys.executable, "-m", "cn_clip_pokemon", "serve", "--checkpoint", str(served["checkpoint"]),
               "--dataset", str(served["dataset"]), "--names", *NAMES, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while "serving http://127.0.0.1" not in log.read_text():
            assert server.poll() is None, f"serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"serve did not start in 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture
def browser():
    why = browser_missing()
    if why:
        # a warning too: `pytest -q` lists it in its summary, where a bare skip is one letter
        reason = f"THE WEB PAGE'S BROWSER TEST DID NOT RUN: {why}"
        warnings.warn(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update",
                     # every host name but 127.0.0.1 fails to resolve: the page must need nothing else
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_the_page_in_chromium(served, page_url, browser, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.2)

    def text_of(element_id):
        found = browser.find_elements(By.ID, element_id)
        return found[0].text.strip() if found else ""

    def upload(path):
        before = text_of("picture-message")
        browser.find_element(By.CSS_SELECTOR, "#picture input[type=file]").send_keys(str(path))
        wait.until(lambda _: text_of("picture-message") not in ("", before))
        return text_of("picture-message")

    def page_top1():
        return wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, "#names [data-testid=label-output-value]").text.strip())

    browser.get(page_url)
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#picture input[type=file]"))
    facts = text_of("facts")
    assert "ViT-T-8-64 + RBT-Tiny-chinese" in facts and str(served["checkpoint"]) in facts and f"{len(NAMES)} names" in facts
    assert len(browser.find_elements(By.CSS_SELECTOR, "[data-testid=examples] img, .gallery img, button.gallery-item img")) >= 4

    # a picture: the page's top-1 is classify --json's
    yellow = disc(tmp_path / "yellow.png", (250, 210, 40), 2)
    upload(yellow)
    best = classify_json(served["checkpoint"], yellow, capsys)[0]
    assert page_top1() == f"{best['name']} #{best['number']}"
    assert text_of("picture-message").startswith(f"{best['name']} #{best['number']}")
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#candidates img")) == 5)

    # a text (traditional characters): a gallery of the dataset's pictures with their names
    query = browser.find_element(By.CSS_SELECTOR, "#query textarea, #query input")
    query.send_keys("噴火龍", Keys.ENTER)
    wait.until(lambda _: "喷火龙" in text_of("search-message"))
    wait.until(lambda _: len(browser.find_elements(By.CSS_SELECTOR, "#found img")) >= 6)
    assert any(name in text_of("found") for name in NAMES)
    browser.save_screenshot(str(tmp_path / "serve.png"))

    # a text file named .png: a message in the page, and the next upload still works
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture\n")
    assert upload(bad) == "⚠️ bad.png: not a picture Pillow can read"
    wait.until(lambda _: any("bad.png" in toast.text for toast in browser.find_elements(By.CSS_SELECTOR, ".toast-body, [data-testid=toast-body]")))
    blue = disc(tmp_path / "blue.png", (60, 120, 230))
    upload(blue)
    best = classify_json(served["checkpoint"], blue, capsys)[0]
    assert page_top1() == f"{best['name']} #{best['number']}"

