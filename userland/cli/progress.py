"""What `run` and `chat` say while the user waits before the first word: the model loading (which
one, its stage, how long against its last load) and a long prompt being read (tokens so far).

On a terminal it is one line on stderr, rewritten in place and wiped when the text starts; in a
pipe or a log, one line per new stage (never one per second)."""

from __future__ import annotations

import sys

import click


def describe(progress: dict) -> str:
    """One progress frame (infer's progress=true) in words."""
    if progress.get("phase") == "prefill":
        return f"reading the prompt: {progress.get('done', 0)}/{progress.get('total', 0)} tokens"
    said = f"loading model {progress.get('model')}: {progress.get('stage', 'queued')}, {progress.get('elapsed_s', 0):.0f}s"
    expected = progress.get("expected_s")
    return said + (f" of about {expected:.0f}s" if expected else "")


class ProgressLine:
    """Feed it progress frames (stream.on_progress = line.show); call done() before printing text."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.shown = ""          # on a terminal: the text now on the line
        self.said = None         # in a pipe: the last (phase, stage) said

    def show(self, progress: dict) -> None:
        text = f"[{describe(progress)}]"
        if self.live:
            click.echo("\r" + text.ljust(len(self.shown)), nl=False, file=self.stream)
            self.shown = text
            return
        key = (progress.get("phase"), progress.get("stage"))
        if key != self.said:
            click.echo(text, file=self.stream)
            self.said = key

    def done(self) -> None:
        """Wipe the line (on a terminal), so the answer starts on a clean one."""
        if self.live and self.shown:
            click.echo("\r" + " " * len(self.shown) + "\r", nl=False, file=self.stream)
            self.shown = ""
