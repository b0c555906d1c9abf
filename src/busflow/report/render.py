"""A tiny document model (blocks) rendered to Markdown and to self-contained HTML.

The report content is assembled once as a list of blocks (see ``content.py``) so the Markdown
and the HTML versions always show the same tables and figures.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

NA = "n/a"


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    @property
    def anchor(self) -> str:
        return anchor_of(self.text)


def anchor_of(text: str) -> str:
    """The id GitHub gives a Markdown heading (lower case, punctuation dropped, spaces to hyphens), used as
    the HTML heading's id too, so one table of contents links both renderings."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@dataclass(frozen=True)
class Para:
    text: str
    css: str = ""  # HTML class (e.g. "ok", "bad", "note")


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class KeyValues:
    pairs: tuple[tuple[str, str], ...]


SOURCE = "source"  # the table column naming the pipeline outputs a row was computed from


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame = field(compare=False)
    caption: str = ""
    empty_note: str = "nothing to show"


@dataclass(frozen=True)
class Figure:
    path: str  # relative to the report directory
    caption: str


@dataclass(frozen=True)
class Links:
    items: tuple[tuple[str, str], ...]  # (relative href, text)
    css: str = ""  # HTML class of the list (e.g. "toc": one line)


@dataclass(frozen=True)
class Gallery:
    items: tuple[tuple[str, str], ...]  # (image path relative to the report directory, caption)


@dataclass(frozen=True)
class Details:
    summary: str
    text: str  # preformatted


@dataclass(frozen=True)
class Collapsed:
    """A section folded away in the HTML (``<details>``, its heading the summary); Markdown shows it in place."""

    heading: Heading
    blocks: tuple[Block, ...]


Block = Heading | Para | Bullets | KeyValues | Table | Figure | Gallery | Links | Details | Collapsed


# --------------------------------------------------------------------------- value formatting


def is_missing(value: object) -> bool:
    """True for None, NaN and empty strings."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(float(value))
    return isinstance(value, str) and value.strip() == ""


def fmt_value(value: object, digits: int = 3) -> str:
    """Numbers to ``digits`` decimals (integers stay integers); missing values to ``n/a``."""
    if is_missing(value):
        return NA
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.{digits}f}"
    return str(value)


def fmt_mean_sd(mean: object, sd: object, digits: int = 3) -> str:
    """``mean ± sd``; ``n/a`` when the mean is undefined, ``mean ± n/a`` for a single fold."""
    if is_missing(mean):
        return NA
    return f"{fmt_value(mean, digits)} ± {fmt_value(sd, digits)}"


def fmt_interval(estimate: object, low: object, high: object, digits: int = 3) -> str:
    """``estimate [low, high]``; the estimate alone when the interval is undefined."""
    if is_missing(estimate):
        return NA
    if is_missing(low) or is_missing(high):
        return fmt_value(estimate, digits)
    return f"{fmt_value(estimate, digits)} [{fmt_value(low, digits)}, {fmt_value(high, digits)}]"


def format_frame(frame: pd.DataFrame, count_columns: Sequence[str] = (), digits: int = 3) -> pd.DataFrame:
    """All cells as display strings; ``count_columns`` are shown as integers."""
    out = pd.DataFrame(index=frame.index)
    for col in frame.columns:
        if col in count_columns:
            out[col] = [NA if is_missing(v) else str(int(float(v))) for v in frame[col]]
        else:
            out[col] = [fmt_value(v, digits) for v in frame[col]]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- Markdown


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no ``tabulate`` dependency)."""
    header = "| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(" ".join(f"[{p}]({source_href(p)})" for p in source_paths(v)) if c == SOURCE else _md_cell(v)
                              for c, v in zip(frame.columns, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _md_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Para):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {item}" for item in block.items)
    if isinstance(block, KeyValues):
        return "\n".join(f"- **{k}**: {v}" for k, v in block.pairs)
    if isinstance(block, Table):
        caption = f"*{block.caption}*\n\n" if block.caption else ""
        body = markdown_table(block.frame) if not block.frame.empty else f"_{block.empty_note}_"
        return caption + body
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.path})\n\n*{block.caption}*"
    if isinstance(block, Links):
        return "\n".join(f"- [{text}]({href})" for href, text in block.items)
    if isinstance(block, Gallery):
        return "\n".join(f"- [{text}]({path})" for path, text in block.items)
    if isinstance(block, Details):
        return f"<details><summary>{block.summary}</summary>\n\n```yaml\n{block.text.rstrip()}\n```\n\n</details>"
    if isinstance(block, Collapsed):
        return "\n\n".join(_md_block(b) for b in (block.heading, *block.blocks))
    raise TypeError(f"unknown block {block!r}")


def render_markdown(blocks: Sequence[Block]) -> str:
    """The whole report as Markdown."""
    return "\n\n".join(_md_block(b) for b in blocks).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
     padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #345;padding-bottom:.3em}
h2{margin-top:2em;border-bottom:1px solid #ccd;padding-bottom:.2em;color:#234}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccd;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#eef2f7}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafbfd}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding-bottom:.3em}
figure{margin:1em 0 2em}
figure img{max-width:100%;border:1px solid #dde}
figcaption{color:#555;font-size:.9em}
.ok{color:#176b2c;font-weight:bold}.bad{color:#a11;font-weight:bold}.note{color:#666;font-style:italic}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}
dl.kv dt{font-weight:bold}dl.kv dd{margin:0;font-family:monospace}
pre{background:#f5f6f8;padding:1em;overflow:auto;font-size:.85em}
.muted{color:#777;font-size:.9em}
.scroll{overflow-x:auto}
.gallery{display:flex;flex-wrap:wrap;gap:1em}.gallery figure{margin:0;max-width:540px}
.gallery img{max-height:260px}
ul.toc{padding:0;margin:.2em 0 1em}ul.toc li{display:inline-block;margin:0 1.2em .2em 0}
details.section>summary{cursor:pointer}details.section>summary h2{display:inline-block;border:none}
"""


def source_paths(cell: object) -> list[str]:
    """The paths of one ``source`` cell (``; ``-joined, relative to ``results/<run>/``)."""
    return [p for p in cell.split("; ") if p] if isinstance(cell, str) else []


def source_href(path: str) -> str:
    """Link from ``results/<run>/report/`` to a file under ``results/<run>/``."""
    return f"../{path}"


def _html_cell(column: str, value: object) -> str:
    if column != SOURCE:
        return html.escape(str(value))
    return " ".join(f'<a href="{html.escape(source_href(p), quote=True)}">{html.escape(p)}</a>' for p in source_paths(value))


def html_table(frame: pd.DataFrame, caption: str = "") -> str:
    """An escaped HTML table of display strings; ``source`` cells become links to the files they name."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_html_cell(c, v)}</td>" for c, v in zip(frame.columns, row)) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _html_thumbnail(path: str, caption: str) -> str:
    src, cap = html.escape(path, quote=True), html.escape(caption)
    return f'<figure><a href="{src}"><img src="{src}" alt="{cap}" loading="lazy"></a><figcaption>{cap}</figcaption></figure>'


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f'<h{block.level} id="{block.anchor}">{html.escape(block.text)}</h{block.level}>'
    if isinstance(block, Para):
        css = f' class="{block.css}"' if block.css else ""
        return f"<p{css}>{html.escape(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, KeyValues):
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in block.pairs)
        return f'<dl class="kv">{items}</dl>'
    if isinstance(block, Table):
        if block.frame.empty:
            cap = f"<p><em>{html.escape(block.caption)}</em></p>" if block.caption else ""
            return f'{cap}<p class="note">{html.escape(block.empty_note)}</p>'
        return html_table(block.frame, block.caption)
    if isinstance(block, Figure):
        src, cap = html.escape(block.path, quote=True), html.escape(block.caption)
        return f'<figure><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
    if isinstance(block, Gallery):
        return '<div class="gallery">' + "".join(_html_thumbnail(p, t) for p, t in block.items) + "</div>"
    if isinstance(block, Links):
        items = "".join(f'<li><a href="{html.escape(h, quote=True)}">{html.escape(t)}</a></li>' for h, t in block.items)
        css = f' class="{block.css}"' if block.css else ""
        return f"<ul{css}>{items}</ul>"
    if isinstance(block, Details):
        return (f"<details><summary>{html.escape(block.summary)}</summary>"
                f"<pre>{html.escape(block.text)}</pre></details>")
    if isinstance(block, Collapsed):
        heading = block.heading
        summary = f'<summary><h{heading.level} id="{heading.anchor}">{html.escape(heading.text)}</h{heading.level}></summary>'
        return f'<details class="section">{summary}\n' + "\n".join(_html_block(b) for b in block.blocks) + "\n</details>"
    raise TypeError(f"unknown block {block!r}")


def render_html(blocks: Sequence[Block], title: str, subtitle: str) -> str:
    """The whole report as one self-contained HTML page (figures linked by relative path)."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<p class=\"muted\">{html.escape(subtitle)}</p>\n"
        f"{body}\n</body>\n</html>\n"
    )
