-- A session event (ban, outdated, logout, keepalive) of a session this poller holds: the admins'
-- log and the session row, in one call (see private.record_session_event).
select private.record_session_event(
  %(me)s, %(id)s, %(kind)s, %(reason)s, %(until)s::timestamptz
) as recorded
