"""Run-time settings as PostgreSQL 18 checks a SET of them: which names exist, which a session may change, and
the values of the few the SQL port reads (``client_encoding``, ``DateStyle``, ``standard_conforming_strings``).

Why a list of names: PostgreSQL refuses ``SET no_such_parameter = 1`` (42704) and a change of a parameter fixed at
build time or server start (55P02); accepting them silently told a client its setting had taken effect.  The names
and contexts are PostgreSQL 18's ``pg_settings`` (``SELECT name, context FROM pg_settings``), kept here as data
because the SQL port has no catalog.  A name with a dot is a custom placeholder (``myapp.mode``), which
PostgreSQL accepts too.  Any other accepted parameter is only stored and shown again by SHOW: the port does not
act on, say, ``work_mem``.
"""

from __future__ import annotations

import functools
import math
import re

from muheam.sql import plan
from muheam.sql.expr import SERVER_VERSION, SqlError

REPORTED = ("application_name", "client_encoding", "DateStyle", "default_transaction_read_only", "in_hot_standby",
            "integer_datetimes", "IntervalStyle", "is_superuser", "server_encoding", "server_version",
            "session_authorization", "standard_conforming_strings", "TimeZone")
"""Settings sent as ParameterStatus at startup and whenever SET changes them (what libpq and psycopg track)."""
DEFAULTS = {"application_name": "", "client_encoding": "UTF8", "DateStyle": "ISO, MDY",
            "default_transaction_read_only": "off", "in_hot_standby": "off", "integer_datetimes": "on",
            "IntervalStyle": "postgres", "is_superuser": "on", "server_encoding": "UTF8",
            "server_version": SERVER_VERSION, "standard_conforming_strings": "on", "TimeZone": "UTC",
            "transaction_isolation": "read committed", "default_transaction_isolation": "read committed",
            "search_path": '"$user", public', "max_identifier_length": "63", "lc_messages": "C",
            "lc_collate": "C", "lc_ctype": "C", "server_version_num": "180000", "extra_float_digits": "1",
            "statement_timeout": "0", "lock_timeout": "0", "idle_in_transaction_session_timeout": "0",
            "synchronous_commit": "on", "transaction_read_only": "off", "bytea_output": "hex",
            # PostgreSQL's defaults of parameters clients and tools read (psql's \password reads
            # password_encryption); the port stores a SET of them and shows it, and acts on none
            "password_encryption": "scram-sha-256", "work_mem": "4MB", "maintenance_work_mem": "64MB",
            "client_min_messages": "notice", "default_transaction_deferrable": "off",
            "transaction_deferrable": "off", "row_security": "on", "check_function_bodies": "on",
            "xmloption": "content", "timezone_abbreviations": "Default",
            "lc_monetary": "C", "lc_numeric": "C", "lc_time": "C", "max_connections": "500"}


CHARACTERISTICS = ("transaction_isolation", "transaction_read_only")
"""Per-transaction settings, each with a session default ``default_<name>``."""
_WORDS = {"on": "on", "true": "on", "yes": "on", "1": "on", "off": "off", "false": "off", "no": "off", "0": "off"}


def characteristic_value(base: str, name: str, value: str) -> str:
    """A transaction characteristic's value as it is kept ("read committed", "on"...), or 22023."""
    v = value.strip().strip("'").lower()
    if base == "transaction_isolation":
        if v not in plan.ISOLATION_LEVELS:
            raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"',
                           "available values: " + ", ".join(plan.ISOLATION_LEVELS))
        return v
    if v not in _WORDS:
        raise SqlError("22023", f'parameter "{name}" requires a Boolean value')
    return _WORDS[v]

_BY_CONTEXT: dict[str, list[str]] = {
    "backend": """
    ignore_system_indexes post_auth_delay
    """.split(),
    "internal": """
    block_size data_checksums data_directory_mode debug_assertions huge_pages_status in_hot_standby
    integer_datetimes max_function_args max_identifier_length max_index_keys num_os_semaphores segment_size
    server_encoding server_version server_version_num shared_memory_size shared_memory_size_in_huge_pages
    ssl_library wal_block_size wal_segment_size
    """.split(),
    "postmaster": """
    archive_mode autovacuum_freeze_max_age autovacuum_multixact_freeze_max_age autovacuum_worker_slots bonjour
    bonjour_name cluster_name commit_timestamp_buffers config_file data_directory data_sync_retry
    debug_io_direct dynamic_shared_memory_type event_source external_pid_file hba_file hot_standby
    huge_page_size huge_pages ident_file ignore_invalid_pages io_max_combine_limit io_max_concurrency io_method
    jit_provider listen_addresses logging_collector max_active_replication_origins max_connections
    max_files_per_process max_locks_per_transaction max_logical_replication_workers max_notify_queue_pages
    max_pred_locks_per_transaction max_prepared_transactions max_replication_slots max_wal_senders
    max_worker_processes min_dynamic_shared_memory multixact_member_buffers multixact_offset_buffers
    notify_buffers port recovery_target recovery_target_action recovery_target_inclusive recovery_target_lsn
    recovery_target_name recovery_target_time recovery_target_timeline recovery_target_xid reserved_connections
    serializable_buffers shared_buffers shared_memory_type shared_preload_libraries subtransaction_buffers
    superuser_reserved_connections trace_connection_negotiation track_activity_query_size track_commit_timestamp
    transaction_buffers unix_socket_directories unix_socket_group unix_socket_permissions wal_buffers
    wal_decode_buffer_size wal_level wal_log_hints
    """.split(),
    "sighup": """
    allow_alter_system archive_cleanup_command archive_command archive_library archive_timeout
    authentication_timeout autovacuum autovacuum_analyze_scale_factor autovacuum_analyze_threshold
    autovacuum_max_workers autovacuum_naptime autovacuum_vacuum_cost_delay autovacuum_vacuum_cost_limit
    autovacuum_vacuum_insert_scale_factor autovacuum_vacuum_insert_threshold autovacuum_vacuum_max_threshold
    autovacuum_vacuum_scale_factor autovacuum_vacuum_threshold autovacuum_work_mem bgwriter_delay
    bgwriter_flush_after bgwriter_lru_maxpages bgwriter_lru_multiplier checkpoint_completion_target
    checkpoint_flush_after checkpoint_timeout checkpoint_warning file_extend_method fsync full_page_writes
    gss_accept_delegation hot_standby_feedback idle_replication_slot_timeout io_workers krb_caseins_users
    krb_server_keyfile log_autovacuum_min_duration log_checkpoints log_destination log_directory log_file_mode
    log_filename log_hostname log_line_prefix log_recovery_conflict_waits log_rotation_age log_rotation_size
    log_startup_progress_interval log_timezone log_truncate_on_rotation
    max_parallel_apply_workers_per_subscription max_pred_locks_per_page max_pred_locks_per_relation
    max_slot_wal_keep_size max_standby_archive_delay max_standby_streaming_delay
    max_sync_workers_per_subscription max_wal_size min_wal_size oauth_validator_libraries pre_auth_delay
    primary_conninfo primary_slot_name recovery_end_command recovery_init_sync_method recovery_min_apply_delay
    recovery_prefetch remove_temp_files_after_crash restart_after_crash restore_command send_abort_for_crash
    send_abort_for_kill ssl ssl_ca_file ssl_cert_file ssl_ciphers ssl_crl_dir ssl_crl_file ssl_dh_params_file
    ssl_groups ssl_key_file ssl_max_protocol_version ssl_min_protocol_version ssl_passphrase_command
    ssl_passphrase_command_supports_reload ssl_prefer_server_ciphers ssl_tls13_ciphers summarize_wal
    sync_replication_slots synchronized_standby_slots synchronous_standby_names syslog_facility syslog_ident
    syslog_sequence_numbers syslog_split_messages wal_keep_size wal_receiver_create_temp_slot
    wal_receiver_status_interval wal_receiver_timeout wal_retrieve_retry_interval wal_summary_keep_time
    wal_sync_method wal_writer_delay wal_writer_flush_after
    """.split(),
    "superuser": """
    allow_in_place_tablespaces allow_system_table_mods backtrace_functions commit_delay compute_query_id
    deadlock_timeout debug_discard_caches dynamic_library_path event_triggers extension_control_path
    ignore_checksum_failure jit_dump_bitcode lc_messages lo_compat_privileges log_duration log_error_verbosity
    log_executor_stats log_lock_failures log_lock_waits log_min_duration_sample log_min_duration_statement
    log_min_error_statement log_min_messages log_parameter_max_length log_parser_stats log_planner_stats
    log_replication_commands log_statement log_statement_sample_rate log_statement_stats log_temp_files
    log_transaction_sample_rate max_stack_depth output_plugin_libraries session_preload_libraries
    session_replication_role temp_file_limit track_activities track_cost_delay_timing track_counts
    track_functions track_io_timing track_wal_io_timing update_process_title wal_compression
    wal_consistency_checking wal_init_zero wal_recycle zero_damaged_pages
    """.split(),
    "superuser-backend": """
    jit_debugging_support jit_profiling_support log_connections log_disconnections
    """.split(),
    "user": """
    application_name array_nulls backend_flush_after backslash_quote bytea_output check_function_bodies
    client_connection_check_interval client_encoding client_min_messages commit_siblings constraint_exclusion
    cpu_index_tuple_cost cpu_operator_cost cpu_tuple_cost createrole_self_grant cursor_tuple_fraction datestyle
    debug_logical_replication_streaming debug_parallel_query debug_pretty_print debug_print_parse
    debug_print_plan debug_print_rewritten default_statistics_target default_table_access_method
    default_tablespace default_text_search_config default_toast_compression default_transaction_deferrable
    default_transaction_isolation default_transaction_read_only effective_cache_size effective_io_concurrency
    enable_async_append enable_bitmapscan enable_distinct_reordering enable_gathermerge
    enable_group_by_reordering enable_hashagg enable_hashjoin enable_incremental_sort enable_indexonlyscan
    enable_indexscan enable_material enable_memoize enable_mergejoin enable_nestloop enable_parallel_append
    enable_parallel_hash enable_partition_pruning enable_partitionwise_aggregate enable_partitionwise_join
    enable_presorted_aggregate enable_self_join_elimination enable_seqscan enable_sort enable_tidscan
    escape_string_warning exit_on_error extra_float_digits file_copy_method from_collapse_limit geqo geqo_effort
    geqo_generations geqo_pool_size geqo_seed geqo_selection_bias geqo_threshold gin_fuzzy_search_limit
    gin_pending_list_limit hash_mem_multiplier icu_validation_level idle_in_transaction_session_timeout
    idle_session_timeout intervalstyle io_combine_limit jit jit_above_cost jit_expressions jit_inline_above_cost
    jit_optimize_above_cost jit_tuple_deforming join_collapse_limit lc_monetary lc_numeric lc_time
    local_preload_libraries lock_timeout log_parameter_max_length_on_error logical_decoding_work_mem
    maintenance_io_concurrency maintenance_work_mem max_parallel_maintenance_workers max_parallel_workers
    max_parallel_workers_per_gather md5_password_warnings min_parallel_index_scan_size
    min_parallel_table_scan_size parallel_leader_participation parallel_setup_cost parallel_tuple_cost
    password_encryption plan_cache_mode quote_all_identifiers random_page_cost recursive_worktable_factor
    restrict_nonsystem_relation_kind row_security scram_iterations search_path seq_page_cost
    standard_conforming_strings statement_timeout stats_fetch_consistency synchronize_seqscans
    synchronous_commit tcp_keepalives_count tcp_keepalives_idle tcp_keepalives_interval tcp_user_timeout
    temp_buffers temp_tablespaces timezone timezone_abbreviations trace_notify trace_sort transaction_deferrable
    transaction_isolation transaction_read_only transaction_timeout transform_null_equals
    vacuum_buffer_usage_limit vacuum_cost_delay vacuum_cost_limit vacuum_cost_page_dirty vacuum_cost_page_hit
    vacuum_cost_page_miss vacuum_failsafe_age vacuum_freeze_min_age vacuum_freeze_table_age
    vacuum_max_eager_freeze_failure_rate vacuum_multixact_failsafe_age vacuum_multixact_freeze_min_age
    vacuum_multixact_freeze_table_age vacuum_truncate wal_sender_timeout wal_skip_threshold work_mem xmlbinary
    xmloption
    """.split(),}
_HIDDEN = {"is_superuser": "internal", "session_authorization": "superuser", "role": "user", "seed": "user"}
"""Parameters ``pg_settings`` does not list that PostgreSQL still knows."""
CONTEXT = {name: context for context, names in _BY_CONTEXT.items() for name in names} | _HIDDEN
"""Lower-case parameter name -> PostgreSQL's context (``user``, ``superuser``: a session may SET it)."""

_ENCODINGS = """
    SQL_ASCII EUC_JP EUC_CN EUC_KR EUC_TW EUC_JIS_2004 UTF8 MULE_INTERNAL LATIN1 LATIN2 LATIN3 LATIN4 LATIN5
    LATIN6 LATIN7 LATIN8 LATIN9 LATIN10 WIN1256 WIN1258 WIN866 WIN874 KOI8R WIN1251 WIN1252 ISO_8859_5
    ISO_8859_6 ISO_8859_7 ISO_8859_8 WIN1250 WIN1253 WIN1254 WIN1255 WIN1257 KOI8U SJIS BIG5 GBK UHC GB18030
    JOHAB SHIFT_JIS_2004
""".split()
ENCODINGS = {e.replace("_", ""): e for e in _ENCODINGS} | {"UNICODE": "UTF8"}
"""PostgreSQL's client encodings by name without underscores (it also takes ``utf-8``, ``Unicode``)."""

_REFUSED = {
    "internal": "cannot be changed",
    "postmaster": "cannot be changed without restarting the server",
    "sighup": "cannot be changed now",
    "backend": "cannot be set after connection start",
    "superuser-backend": "cannot be set after connection start",
}
_BOOLEAN = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
_STYLES = {"iso": "ISO", "sql": "SQL", "postgres": "Postgres", "german": "German"}
_ORDERS = {"ymd": "YMD", "dmy": "DMY", "euro": "DMY", "european": "DMY", "mdy": "MDY", "us": "MDY",
           "noneuro": "MDY", "noneuropean": "MDY"}


def check(name: str, value: str, current: str) -> str:
    """The value ``SET name = value`` stores, normalised as SHOW shows it (``current``: the value now), or the
    SqlError PostgreSQL gives."""
    key = name.lower()
    context = CONTEXT.get(key)
    if context is None:
        if "." in key:
            return value
        raise SqlError("42704", f'unrecognized configuration parameter "{name}"')
    if context in _REFUSED:
        raise SqlError("55P02", f'parameter "{name}" {_REFUSED[context]}')
    if key == "client_encoding":
        encoding = ENCODINGS.get(value.strip().upper().replace("-", "").replace("_", ""))
        if encoding is None:
            raise SqlError("22023", f'invalid value for parameter "client_encoding": "{value}"')
        if encoding != "UTF8":
            raise SqlError("0A000", f"client_encoding {value} is not supported; MUHEAM speaks UTF8")
        return "UTF8"
    if key == "datestyle":
        return _datestyle(name, value, current)
    if key in TIMEOUTS:
        return show_ms(parse_ms(name, value))
    if key == "standard_conforming_strings":
        flag = _BOOLEAN.get(value.strip().lower())
        if flag is None:
            raise SqlError("22023", f'parameter "{name}" requires a Boolean value')
        if not flag:
            raise SqlError("0A000", "standard_conforming_strings = off is not supported: MUHEAM reads string "
                           "literals as standard SQL (a backslash is an ordinary character)",
                           "write escapes as E'...' strings")
        return "on"
    return value


TIMEOUTS = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
"""Durations in milliseconds (0: none).  The port acts on ``lock_timeout`` (a row lock's wait, 55P03) and
``statement_timeout`` (57014); ``idle_in_transaction_session_timeout`` is checked and stored only (the node's
``idle_in_transaction_timeout`` applies)."""
_MS_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_MS = 2_147_483_647


def parse_ms(name: str, value: str) -> int:
    """A duration setting's value in milliseconds as PostgreSQL reads it: a number (milliseconds) or a number
    with a unit (``us``, ``ms``, ``s``, ``min``, ``h``, ``d``; fractions are rounded to milliseconds), in
    0 .. 2147483647; else 22023."""
    text = value.strip().strip("'").strip()
    m = re.fullmatch(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-z]*)", text)
    if m is None or m.group(2) not in ("", *_MS_UNITS):
        hint = 'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".' if m else ""
        raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"', hint)
    exact = float(m.group(1)) * _MS_UNITS.get(m.group(2) or "ms", 1)
    ms = round(exact) if math.isfinite(exact) else _MAX_MS + 1  # ('1e400' is not a number of milliseconds)
    if not 0 <= ms <= _MAX_MS:
        raise SqlError("22023", f'{ms} ms is outside the valid range for parameter "{name}" (0 .. {_MAX_MS})')
    return ms


@functools.lru_cache(maxsize=256)
def seconds(name: str, shown: str) -> float:
    """A duration setting as a session keeps it (``show_ms``'s form) in seconds, 0 for none or a value that is not
    a duration; cached, as every statement asks for its session's timeouts."""
    try:
        return parse_ms(name, shown) / 1000
    except SqlError:
        return 0.0


def show_ms(ms: int) -> str:
    """As SHOW gives a duration: in the largest unit that divides it (``500ms``, ``2s``, ``1min``), ``0``."""
    if ms == 0:
        return "0"
    for unit in ("d", "h", "min", "s"):
        size = int(_MS_UNITS[unit])
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _datestyle(name: str, value: str, current: str) -> str:
    """PostgreSQL's ``check_datestyle``: an output style and a field order, each at most once, shown as
    ``Style, ORDER``; German alone implies DMY, and what is not given stays as it was."""
    style, order = (current.split(", ") + ["MDY"])[:2]
    new_style = new_order = None
    for token in value.replace(",", " ").split():
        word = token.strip().lower()
        if word in _STYLES and new_style in (None, _STYLES[word]):
            new_style = _STYLES[word]
        elif word in _ORDERS and new_order in (None, _ORDERS[word]):
            new_order = _ORDERS[word]
        elif word == "default":
            new_style, new_order = new_style or "ISO", new_order or "MDY"
        else:
            problem = "Conflicting \"datestyle\" specifications" if word in _STYLES or word in _ORDERS else \
                f'Unrecognized key word: "{token}".'
            raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"', problem)
    if new_style is None and new_order is None:
        raise SqlError("22023", f'invalid value for parameter "{name}": "{value}"')
    if new_style == "German" and new_order is None:
        new_order = "DMY"
    return f"{new_style or style}, {new_order or order}"
