"""Write one benchmark's section of ``docs/benchmarks.md`` and keep the others."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every section below is written by the script it names; rerun the script to "
    "refresh it. Labels are used only to score.\n"
)


def machine():
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} torch threads, {gpu}; python "
            f"{platform.python_version()}, torch {torch.__version__}")


def write_section(key, markdown):
    """Replace (or append) the block between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- {key}:begin -->\n{markdown.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:begin -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC
