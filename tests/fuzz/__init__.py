"""Fuzzing a running gateway: generators of hostile input (:mod:`.generators`),
a client that sends any frame (:mod:`.wire`), the judge of every answer
(:mod:`.runner`), and the long standalone run (``python -m tests.fuzz``)."""
