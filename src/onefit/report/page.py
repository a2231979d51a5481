"""A report as plain data, and its two renderings: one self-contained HTML page (inline CSS and
SVG, no script, nothing fetched) and Markdown for terminals and pull requests.

A report is ``{"title": str, "sections": [section, ...]}``; a section has a ``title``, and any of
``text`` (paragraphs), ``tables`` (``{"id", "columns", "rows"}``) and ``figures`` (``{"id", "svg",
"caption"}``). Both renderings walk the same data, so they always say the same.

>>> page = {"title": "t", "sections": [{"title": "Models", "text": ["two <b>"],
...          "tables": [{"id": "models", "columns": ["name", "ms"], "rows": [["m00", 1.5]]}]}]}
>>> print(markdown(page))
# t
<BLANKLINE>
## Models
<BLANKLINE>
two <b>
<BLANKLINE>
| name | ms |
|---|---|
| m00 | 1.5 |
<BLANKLINE>
>>> "two &lt;b&gt;" in html(page) and '<table id="models">' in html(page)
True
"""

from __future__ import annotations

from html import escape

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2230;background:#fafbfc}
main{max-width:1180px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
p{margin:6px 0;max-width:900px}.lead{color:#4a5263}
table{border-collapse:collapse;margin:10px 0;font-size:13px;background:#fff}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:flex;flex-wrap:wrap;gap:16px}figure{margin:8px 0;background:#fff;border:1px solid #dde1e8;padding:8px}
figcaption{font-size:13px;color:#4a5263;max-width:520px}figure svg{display:block;width:520px;height:auto}
.scroll{overflow-x:auto}
"""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _html_table(table: dict) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in table["columns"])
    rows = []
    for row in table["rows"]:
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if isinstance(value, dict) and "href" in value:  # a link to a file beside the report
                text = f'<a href="{escape(value["href"])}">{escape(value["text"])}</a>'
            else:
                text = escape(_cell(value))
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table id="{escape(table.get("id", ""))}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def html(page: dict) -> str:
    """The report as one HTML document that needs nothing but itself."""
    parts = [f"<h1>{escape(page['title'])}</h1>"]
    for section in page["sections"]:
        parts.append(f"<section><h2>{escape(section['title'])}</h2>")
        parts += [f"<p>{escape(t)}</p>" for t in section.get("text", [])]
        parts += [_html_table(t) for t in section.get("tables", [])]
        figures = [f'<figure id="{escape(f["id"])}">{f["svg"]}<figcaption>{escape(f["caption"])}</figcaption></figure>'
                   for f in section.get("figures", [])]
        if figures:
            parts.append(f'<div class="figures">{"".join(figures)}</div>')
        parts.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(page["title"])}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><main>{''.join(parts)}</main></body></html>\n")


def _md_cell(value) -> str:
    text = value["text"] if isinstance(value, dict) and "text" in value else _cell(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(page: dict) -> str:
    lines = [f"# {page['title']}", ""]
    for section in page["sections"]:
        lines += [f"## {section['title']}", ""]
        for text in section.get("text", []):
            lines += [text, ""]
        for table in section.get("tables", []):
            lines.append("| " + " | ".join(map(str, table["columns"])) + " |")
            lines.append("|" + "---|" * len(table["columns"]))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table["rows"]]
            lines.append("")
        for figure in section.get("figures", []):
            lines += [f"Figure (in report.html): {figure['caption']}", ""]
    return "\n".join(lines)
