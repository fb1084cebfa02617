"""The command lines (run, pack, sweep, summarize, benchmark): the top layer."""
