-- The backlog and expiries of each session this poller holds, for /metrics.
select session_id, depth, oldest_age_seconds, expired from private.outbound_backlog(%(me)s)
