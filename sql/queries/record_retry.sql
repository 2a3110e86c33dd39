-- A transient failure: back to pending with the error, and invisible until the backoff ends.
with retried as (
  update public.messages
  set status = 'pending', error_log = %(error)s, attempts = attempts + 1
  where id = %(id)s and status in ('pending', 'sending')
  returning id
)
select msg_id
from pgmq.set_vt('whatsapp_outbound', array[%(msg_id)s]::bigint[], clock_timestamp() + make_interval(secs => %(delay)s))
