"""Operating a cluster from outside its nodes: the local one-command cluster (``cluster``), processes and ports
(``procs``), the embedded etcd server (``etcd_server``), the shared directory's layout and control file
(``control``), and WAL inspection for operators (``waldump``, ``walcheck``).

May import: ``config``, ``errors``, ``membership``, ``engine`` and ``storage`` (to read WAL payloads), ``walmerge``.
Never imports ``node`` in-process (nodes are started as processes), ``cluster``, ``recovery`` or ``cli``.
"""
