"""The one exception type whose message is shown to the user as is (one line, no traceback)."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the message names the file and what to do."""


# Exit codes of every command: 0 done, 1 a UserError, 2 bad command-line usage (argparse),
# 130 interrupted with Ctrl-C.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def install_hint(extra):
    """The pip command that adds an optional extra, said the way this copy was installed: a clone
    installed with ``pip install -e .`` gets ``pip install -e 'CLONE[extra]'`` (as the README says),
    an installed wheel gets ``pip install 'cn-clip-pokemon[extra]'``."""
    import json
    from importlib import metadata

    info = {}
    # every copy pip knows of (an egg-info folder in the working directory comes first, without a URL)
    for distribution in metadata.distributions(name="cn-clip-pokemon"):
        try:
            info = json.loads(distribution.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if info:
            break
    url = info.get("url", "")
    if info.get("dir_info", {}).get("editable") and url.startswith("file://"):
        from urllib.parse import unquote, urlparse

        clone = unquote(urlparse(url).path)
        return f"pip install -e '{clone}[{extra}]'"
    return f"pip install 'cn-clip-pokemon[{extra}]'"
