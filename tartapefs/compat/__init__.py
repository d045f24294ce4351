"""Drop-in layers for programs written against an earlier TarTape.

Three generations of TarTape's Python API exist; each is served here by
changing one import, on top of tartapefs' own recording, reader and player:

* the first TarTape (``TarTape().add_folder(...)``, ``stream()`` events typed by
  ``TarEventType``): :mod:`tartapefs.compat.v1`;
* TarTape 2.0 (``TapeRecorder``, ``Tape.discover``, ``TapePlayer``): the
  package itself, ``from tartapefs import ...``;
* tartape 3.x (``record()``, ``open()``, ``open_catalog()``, ``as_file()``,
  volumes, ``catalog.locate()``): :mod:`tartapefs.compat.v3`.

The layers translate names and shapes only; the archive's bytes are always
tartapefs' (ustar, PAX where ustar cannot hold a field). What differs from
each original is listed in the README ("Coming from TarTape").
"""
