"""Count the dashboard's chart elements in an HTML document (the page as written, or a browser's DOM)."""
from __future__ import annotations

from collections import Counter
from html.parser import HTMLParser


class ElementCounter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.classes: Counter = Counter()  # "<tag>.<class>" -> count
        self.tags: Counter = Counter()
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.in_script = tag == "script"
        for cls in (dict(attrs).get("class") or "").split():
            self.classes[f"{tag}.{cls}"] += 1

    def handle_endtag(self, tag):
        self.in_script = False if tag == "script" else self.in_script

    def handle_data(self, data):
        (self.scripts if self.in_script else self.text).append(data)


def elements(html: str) -> ElementCounter:
    counter = ElementCounter()
    counter.feed(html)
    counter.close()
    return counter
