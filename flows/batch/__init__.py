"""Batch scoring: a table or batch files scored with ``@champion``, predictions written exactly once.

``inputs`` (what is read: a table version or a file's content, one input version each),
``scoring`` (one chunk through the server's input contract and one call of ``chain``, the
server's fallback chain: ``@champion``, ``@previous``, the baseline),
``delivery`` (each chunk's predictions appended once; the rows it cannot deliver to the
dead-letter queue, ``checkpoints.dlq``; replays), ``champion`` (the model), ``flow``
(the ``selfheal-batch-inference`` deployment's flow). ``selfheal score`` and
``selfheal dlq`` (``flows.cli.batch``) run the same functions in-process.
"""
