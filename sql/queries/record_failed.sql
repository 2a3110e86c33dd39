-- `counted` is 1 when a send was attempted, 0 when the message failed without one (expired).
with failed as (
  update public.messages m
  set status = 'failed', error_log = f.error, attempts = m.attempts + f.counted
  from unnest(%(ids)s::uuid[], %(errors)s::text[], %(counted)s::int[]) as f(id, error, counted)
  where m.id = f.id and m.status in ('pending', 'sending')
  returning m.id
)
select pgmq.archive('whatsapp_outbound', %(msg_ids)s::bigint[]) as msg_id
