"""Streaming replication of the merged WAL stream into PostgreSQL (issue 20).

``decode`` (pure: no I/O) turns merged-stream records into committed transactions in commit order, with table
definitions from the stream's catalog records; ``apply`` writes them into PostgreSQL through psycopg, on one or
several connections, with the progress position in the same PostgreSQL transaction as the changes it covers;
``copy`` makes a new replica's initial copy (one cluster snapshot, consistent with a stream position, committed in
PostgreSQL with that position); ``run`` is the replicator's loop (initial copy, subscriber, decoder, applier,
resume after any failure, progress reports).

May import: ``walstream`` (the subscriber client, so a change to the stream's transport applies here too),
``engine.walrec`` (record formats), ``storage.schema``, ``membership``, ``walmerge``, ``errors``, ``client`` (the
copy reads the nodes as any client; the confirmations), ``failpoints``.  Never imports
``node``, ``cluster``, ``recovery`` or ``cli``.
"""
