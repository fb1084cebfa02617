"""The exit statuses of the command lines that train (run.py, pack.py; sweep.py's mean the
same): docs/flags.md's table says what each asks for. Only the standard library."""
import signal

EXIT_FINISHED, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGNAL: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # {signal number: status}
