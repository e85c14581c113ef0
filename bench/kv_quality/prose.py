"""English prose that no one in this project wrote: the paragraphs of the Debian Administrator's
Handbook (Debian package `debian-handbook`), as one plain-text file for perplexity runs.

    import prose; path = prose.ensure_prose()          # ~/.cache/ramstream/prose/debian-handbook-en.txt
    python3 bench/kv_quality/prose.py [--force]        # (re)build it and print what it holds

The book's HTML (publican/DocBook) marks each paragraph as <div class="para">; its <p> elements
are almost all titles ("Example 6.1 ..."), so the paragraphs are taken from div.para (the
outermost one where they nest; plain <p> without a class are kept too). Code listings and screen
captures (<pre>), the "→ URL" lines (div.url), tables and titles are left out. Entities are
unescaped (html.parser does it), whitespace collapsed to single spaces, paragraphs separated by a
blank line. Chapters are read in the book's order: the order their files first appear in the
table of contents of index.html (the front page's legal notice is not read).
"""

import argparse
import html.parser
import os
import re
import subprocess
import sys

PACKAGE = "debian-handbook"
HTML_DIR = "/usr/share/doc/debian-handbook/html/en-US"
NAME = "debian-handbook-en.txt"


def log(msg):
    print(f"prose: {msg}", file=sys.stderr, flush=True)


def cache_dir():
    return os.environ.get("RAMSTREAM_CACHE", os.path.expanduser("~/.cache/ramstream"))


def package_version():
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True,
                       text=True)
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else None


def ensure_package():
    """The package's version; apt-get installs it first where it is missing."""
    version = package_version()
    if version and os.path.isdir(HTML_DIR):
        return version
    log(f"the Debian package '{PACKAGE}' (the English prose this benchmark reads) is not "
        f"installed; running apt-get install -y {PACKAGE} (needs root and the network)")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
    if os.geteuid() != 0:
        cmd = ["sudo"] + cmd
    if subprocess.run(cmd).returncode != 0:
        subprocess.run((["sudo"] if os.geteuid() != 0 else []) + ["apt-get", "update"])
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"prose: could not install '{PACKAGE}'; install it by hand "
                             f"(apt-get install {PACKAGE}) and run again")
    version = package_version()
    if not version or not os.path.isdir(HTML_DIR):
        raise SystemExit(f"prose: '{PACKAGE}' installed but {HTML_DIR} is missing")
    return version


class _Paragraphs(html.parser.HTMLParser):
    """Collects the text of the outermost div.para / class-less <p> elements of one page."""

    SKIP = {"pre", "table", "script", "style"}
    VOID = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self._stack = []  # (tag, kind) where kind: "para", "skip" or ""
        self._buf = None

    def _in(self, kind):
        return any(k == kind for _, k in self._stack)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        cls = (dict(attrs).get("class") or "").split()
        kind = ""
        if tag in self.SKIP or (tag == "div" and ("url" in cls or "title" in cls)) or \
                (tag == "p" and cls):
            kind = "skip"
        elif (tag == "div" and "para" in cls) or (tag == "p" and not cls):
            if not self._in("para"):
                kind = "para"
                self._buf = []
        self._stack.append((tag, kind))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        # Pop to the matching open tag (the XHTML is well formed; this only guards stray tags).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                closed = self._stack[i:]
                del self._stack[i:]
                if any(k == "para" for _, k in closed) and not self._in("para"):
                    text = re.sub(r"\s+", " ", "".join(self._buf)).strip()
                    if text:
                        self.paragraphs.append(text)
                    self._buf = None
                return

    def handle_data(self, data):
        if self._buf is not None and not self._in("skip"):
            self._buf.append(data)


def chapter_files():
    index = open(os.path.join(HTML_DIR, "index.html"), encoding="utf-8").read()
    toc = index[index.find('class="toc"'):]
    files = []
    for href in re.findall(r'href="([^"#]+\.html)', toc):
        if href not in files and os.path.exists(os.path.join(HTML_DIR, href)):
            files.append(href)
    return files


def extract():
    paragraphs = []
    for name in chapter_files():
        p = _Paragraphs()
        p.feed(open(os.path.join(HTML_DIR, name), encoding="utf-8").read())
        p.close()
        paragraphs += p.paragraphs
    return paragraphs


def ensure_prose(force=False, quiet=False):
    """Path of the cached prose file; builds it on first use."""
    version = ensure_package()
    path = os.path.join(cache_dir(), "prose", NAME)
    stamp = path + ".version"
    if not force and os.path.exists(path) and os.path.exists(stamp) and \
            open(stamp).read() == version:
        if not quiet:
            text = open(path, encoding="utf-8").read()
            log(f"{path}: {PACKAGE} {version}, {len(text)} characters, "
                f"{text.count(chr(10) + chr(10)) + 1} paragraphs (cached)")
        return path
    paragraphs = extract()
    if len(paragraphs) < 100:
        raise SystemExit(f"prose: only {len(paragraphs)} paragraphs in {HTML_DIR}; "
                         "the book's layout is not the one this script knows")
    text = "\n\n".join(paragraphs) + "\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    with open(stamp, "w") as f:
        f.write(version)
    log(f"{path}: {PACKAGE} {version}, {len(text)} characters, {len(paragraphs)} paragraphs "
        f"from {len(chapter_files())} HTML files")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--force", action="store_true", help="rebuild the cached file")
    a = ap.parse_args()
    print(ensure_prose(force=a.force))


if __name__ == "__main__":
    main()
