"""Cleaning the builtin corpus's raw files into plain text: pure functions on strings and bytes.

Project Gutenberg texts lose their front and back matter and are normalised (prose unwrapped,
verse kept line by line); the MediaWiki export becomes one readable article per page. Any change
to a rule here changes the corpus: bump `seqwarm.data.builtin.corpus.BUILD` with it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from seqwarm.errors import DataError

# A Gutenberg header ends within a text's first lines and a footer (with the full licence) fits
# in its last lines; a mention of Gutenberg elsewhere is part of the body (lcet10 is about etexts).
_HEADER_LINES = 120
_FOOTER_LINES = 400
_BOILERPLATE = re.compile(
    r"project gutenberg|\be-?(texts?|books?)\b|\*\*\*\s*(start|end) of|small print", re.IGNORECASE
)
# Gutenberg hard-wraps prose near column 70, so a line of a wrapped paragraph reaches at least
# ~55 columns unless it is the paragraph's last; verse lines rarely all do.
_WRAP_MIN = 55


def strip_gutenberg(text: str) -> str:
    """Drop Project Gutenberg front and back matter (header, notes, footer, licence).

    Boilerplate paragraphs are those that mention Project Gutenberg, etexts, ebooks or a
    ``*** START OF`` / ``*** END OF`` marker and start within the first 120 or the last 400
    lines; the text is the longest run of paragraphs between them (by characters). Text
    without boilerplate is returned unchanged apart from line endings.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = re.split(r"\n[ \t]*\n", text)
    n_lines = text.count("\n") + 1
    runs, run_start, line = [], 0, 0
    for i, paragraph in enumerate(paragraphs):
        near_edge = line < _HEADER_LINES or line >= n_lines - _FOOTER_LINES
        if near_edge and _BOILERPLATE.search(paragraph):
            runs.append((run_start, i))
            run_start = i + 1
        line += paragraph.count("\n") + 2
    runs.append((run_start, len(paragraphs)))
    first, last = max(runs, key=lambda run: sum(map(len, paragraphs[run[0] : run[1]])))
    return "\n\n".join(paragraphs[first:last])


def normalise_plain_text(text: str) -> str:
    """Normalise hard-wrapped plain text: one blank line between paragraphs, prose unwrapped.

    Inside a paragraph, whitespace runs collapse to one space and lines without a letter or digit
    (``***`` rules) go. A paragraph whose lines all reach column 55, except its last, is wrapped
    prose and is joined into one line; a short first line (a heading, a speaker's name) stays on
    its own line. Anything else (verse, lists, tables of contents) keeps its lines.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("`", "'")
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.rstrip() for line in block.split("\n")]
        lines = [line for line in lines if any(c.isalnum() for c in line)]
        if lines:
            paragraphs.append("\n".join(_unwrap(lines)))
    return "\n\n".join(paragraphs) + "\n" if paragraphs else ""


def _unwrap(lines: list[str]) -> list[str]:
    head, body = ([lines[0]], lines[1:]) if len(lines[0]) < _WRAP_MIN else ([], lines)
    if len(body) >= 2 and all(len(line) >= _WRAP_MIN for line in body[:-1]):
        body = [_join_wrapped(body)]
    return [" ".join(line.split()) for line in head + body]


def _join_wrapped(lines: list[str]) -> str:
    joined = lines[0].strip()
    for line in lines[1:]:
        # "WAISTCOAT-" + "POCKET" was one hyphenated word split by the wrap, not two words.
        glue = "" if re.search(r"[A-Za-z]-$", joined) else " "
        joined += glue + line.strip()
    return joined


def clean_gutenberg(raw: bytes) -> str:
    """A raw Project Gutenberg file (UTF-8 bytes) as normalised text without its boilerplate."""
    return normalise_plain_text(strip_gutenberg(raw.decode("utf-8")))


# Reference-like sections ("References", "Notes and references", ...) hold citations and link
# lists, not prose.
_REFERENCE_SECTION = (
    r"(selected )?(see also|references|notes|footnotes|citations|sources|bibliography"
    r"|further reading|external links|gallery)"
)
_DROPPED_SECTION = re.compile(rf"{_REFERENCE_SECTION}( and {_REFERENCE_SECTION})*", re.IGNORECASE)
_LEVEL2_HEADING = re.compile(r"^==(?!=)[ \t]*(.*?)[ \t]*==[ \t]*$", re.MULTILINE)
_DROPPED_TAGS = {"ref", "references", "table", "gallery"}
# mwparserfromhell leaves markup it cannot parse (deeply nested or unbalanced) as plain text, so
# the commonest offenders are cut out of the raw markup before parsing.
_RAW_NOISE = re.compile(
    r"<!--.*?-->"  # comments
    r"|<ref\b[^>]*/>"  # self-closing references
    r"|<ref\b[^>]*>.*?</ref\s*>"  # references
    r"|^\{\|.*?^\|\}",  # tables (not nested)
    re.DOTALL | re.IGNORECASE | re.MULTILINE,
)
_DROPPED_LINK = re.compile(r"^\s*:?\s*(file|image|media|category)\s*:", re.IGNORECASE)


def wikitext_to_text(wikitext: str) -> str:
    """Readable prose from MediaWiki markup.

    Drops templates, references, tables, galleries, file/image/category links and the
    reference-like sections (See also, References, External links, ...). Links become their
    visible text, section headings become plain lines of their own, paragraphs are separated by
    one blank line.
    """
    try:
        import mwparserfromhell  # needed only to build the Wikipedia part
    except ImportError as exc:
        raise DataError(
            "builtin corpus: cleaning the Wikipedia sample needs mwparserfromhell; "
            "run `pip install mwparserfromhell` and retry"
        ) from exc

    # Unbalanced '' often nests the rest of an article inside one italic node, so nothing here
    # may assume that headings, refs or links sit at the top level of the parse tree.
    code = mwparserfromhell.parse(_RAW_NOISE.sub("", _drop_sections(wikitext)))
    dropped = code.filter_tags(matches=lambda tag: str(tag.tag).lower() in _DROPPED_TAGS)
    dropped += code.filter_wikilinks(matches=lambda link: _DROPPED_LINK.match(str(link.title)))
    for node in dropped:
        try:
            code.remove(node)
        except ValueError:
            pass  # it sat inside a node removed before it
    for heading in code.filter_headings():
        code.replace(heading, "\n\n" + heading.title.strip_code().strip() + "\n\n")
    return _tidy_wiki_text(code.strip_code(normalize=True, collapse=True))


def _drop_sections(wikitext: str) -> str:
    pieces = _LEVEL2_HEADING.split(wikitext)  # [lead, title, body, title, body, ...]
    kept = [pieces[0]]
    for title, body in zip(pieces[1::2], pieces[2::2]):
        if not _DROPPED_SECTION.fullmatch(title):
            kept.append(f"== {title} ==" + body)
    return "".join(kept)


# Table rows and image links that even the raw-markup pass missed (nested tables, captions with
# nested links) survive as lines of markup.
_UNPARSED_LINE = re.compile(r"(\||\{\||!|\[\[(file|image):)", re.IGNORECASE)


def _tidy_wiki_text(text: str) -> str:
    text = text.replace("\xa0", " ")
    # Removed templates and refs leave empty brackets and spaces before punctuation.
    text = re.sub(r"\(\s*(?:[,;]\s*)+", "(", text)
    text = re.sub(r"\(\s*\)", "", text)
    text = re.sub(r"[ \t]+([,.;:])", r"\1", text)
    lines = (" ".join(line.split()) for line in text.split("\n"))
    text = "\n".join(line for line in lines if not _UNPARSED_LINE.match(line))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# Shorter articles are stubs or lists that say little about WikiText-style perplexity.
MIN_ARTICLE_WORDS = 150


def wiki_articles(xml: bytes) -> list[tuple[str, str]]:
    """(title, text) of each article of a MediaWiki XML dump; redirects, disambiguations and stubs are dropped."""
    root = ET.fromstring(xml)
    ns = root.tag[: root.tag.index("}") + 1]  # the export schema's namespace, e.g. "{...0.10/}"
    articles = []
    for page in root.iter(f"{ns}page"):
        title = page.findtext(f"{ns}title", "")
        if (
            page.findtext(f"{ns}ns") != "0"
            or page.find(f"{ns}redirect") is not None
            or title.endswith("(disambiguation)")
        ):
            continue
        text = wikitext_to_text(page.findtext(f"{ns}revision/{ns}text", ""))
        if len(text.split()) >= MIN_ARTICLE_WORDS:
            articles.append((title, text))
    return articles
