"""The progress line: drawn in place on a terminal, as plain lines (rarely) otherwise."""

from __future__ import annotations

import io

from tailguard.bench.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_line_redrawn_in_place() -> None:
    out = Tty()
    p = Progress(10.0, stream=out, width=10)
    p.update(0.1, 1, 1, 0, None, None)  # before the first interval: nothing
    p.update(5.0, 500, 490, 10, 120.0, 2500.0)
    p.update(5.1, 510, 500, 10, 120.0, 2500.0)  # within the interval: skipped
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 1 and text.endswith("\n")
    assert "[#####-----]  50%" in text and "sent 500" in text and "not-ok 10" in text
    assert "mean 120us max 2.50ms" in text


def test_a_pipe_gets_plain_lines_every_five_seconds() -> None:
    out = io.StringIO()
    p = Progress(20.0, stream=out)
    for t in range(1, 21):
        p.update(float(t), t, t, 0, None, None)
    p.close()
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 4
