"""A fuzz harness for hostile workflow, config, inputs and environment files.

It mutates the example workflows (with their prompt and schema files), the
config files and inputs files, and feeds each case to the ``aoe`` command
line in-process, inside worker processes it supervises:

- :mod:`tests.fuzz.payloads` holds the hostile values (huge numbers, tags,
  alias bombs, templates, expressions, paths, schemas);
- :mod:`tests.fuzz.mutators` changes a file's bytes, lines or structure;
- :mod:`tests.fuzz.cases` makes case number ``i`` of seed ``s``, always the same;
- :mod:`tests.fuzz.worker` runs cases and says what a user would have seen;
- :mod:`tests.fuzz.pool` runs the workers: a case over 5 s is a hang and a
  worker over 500 MB a memory finding, each killed and replaced;
- :mod:`tests.fuzz.minimise` shrinks a failing case while it fails the same way;
- :mod:`tests.fuzz.campaign` puts them together and writes the findings.

``make fuzz SECONDS=600`` runs it (``python -m tests.fuzz --help``); a bounded
slice runs in ``make test`` (tests/test_fuzz.py), and the reproducers it found
are named cases in tests/test_fuzz_cases.py.
"""
