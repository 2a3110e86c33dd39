-- Give messages back without counting an attempt (session down, a retry or shutdown behind them,
-- another poller's): pending again, and visible to any poller after `delay` seconds.
with released as (
  update public.messages
  set status = 'pending'
  where id = any(%(ids)s::uuid[]) and status = 'sending'
  returning id
)
select msg_id from pgmq.set_vt('whatsapp_outbound', %(msg_ids)s::bigint[], clock_timestamp() + make_interval(secs => %(delay)s))
