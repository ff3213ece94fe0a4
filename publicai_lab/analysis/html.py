"""One document, two renderings: Markdown beside its PNG files, and standalone HTML.

A report is built as a list of blocks (heading, paragraph, bullet list, table, figure). The
Markdown rendering links the figures as files written next to it; the HTML rendering embeds them
as base64 PNG ``data:`` URIs, so a single ``.html`` file can be mailed or attached to an issue
without its folder. Neither contains timestamps or absolute paths: the same content gives the same
bytes (matplotlib's PNG metadata is stripped for the same reason).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Document", "figure_png"]

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1rem 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.85rem; color: #555; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes without metadata (so the bytes are reproducible); the
    figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


@dataclass
class Document:
    """Blocks of a report; ``to_markdown()`` and ``to_html()`` render them."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> "Document":
        self.blocks.append(("heading", (level, text)))
        return self

    def paragraph(self, text: str) -> "Document":
        """Plain text; inline ``code`` in backticks is kept in both renderings."""
        self.blocks.append(("paragraph", text))
        return self

    def bullets(self, items: list[str]) -> "Document":
        self.blocks.append(("bullets", list(items)))
        return self

    def table(self, header: list[str], rows: list[list[str]]) -> "Document":
        """Cells are already formatted strings; the first column is left-aligned."""
        self.blocks.append(("table", (list(header), [list(map(str, r)) for r in rows])))
        return self

    def figure(self, name: str, png: bytes, caption: str = "") -> "Document":
        """``name`` is the PNG file name used by the Markdown rendering."""
        self.blocks.append(("figure", (name, png, caption)))
        return self

    # ------------------------------------------------------------------ renderings

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                out += ["#" * level + " " + text, ""]
            elif kind == "paragraph":
                out += [value, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
                out += ["| " + " | ".join(r) + " |" for r in rows]
                out.append("")
            elif kind == "figure":
                name, _, caption = value
                out += [f"![{caption or name}]({name})", ""]
                if caption:
                    out += [f"*{caption}*", ""]
        return "\n".join(out).rstrip() + "\n"

    def to_html(self) -> str:
        esc = _inline
        out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
               f"<title>{html.escape(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
               f"<h1>{esc(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                out.append(f"<h{level}>{esc(text)}</h{level}>")
            elif kind == "paragraph":
                out.append(f"<p>{esc(value)}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
                           + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</tbody></table>")
            elif kind == "figure":
                name, png, caption = value
                data = base64.b64encode(png).decode("ascii")
                out.append(f'<figure><img alt="{html.escape(caption or name)}" '
                           f'src="data:image/png;base64,{data}">'
                           + (f"<figcaption>{esc(caption)}</figcaption>" if caption else "") + "</figure>")
        out += ["</body>", "</html>"]
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``STEM.md`` with its PNGs, and the standalone ``STEM.html``; return both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for kind, value in self.blocks:
            if kind == "figure":
                (out / value[0]).write_bytes(value[1])
        md = out / f"{stem}.md"
        md.write_text(self.to_markdown(), encoding="utf-8")
        page = out / f"{stem}.html"
        page.write_text(self.to_html(), encoding="utf-8")
        return md, page


def _inline(text: str) -> str:
    """Escape HTML, then turn `code` spans into <code> (the one inline markup we use)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
