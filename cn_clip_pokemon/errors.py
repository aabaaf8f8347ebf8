"""The one exception type whose message is shown to the user as is (one line, no traceback)."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the message names the file and what to do."""


# Exit codes of every command: 0 done, 1 a UserError, 2 bad command-line usage (argparse),
# 130 interrupted with Ctrl-C.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
